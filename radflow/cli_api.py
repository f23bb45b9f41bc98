"""``radflow api``: the local Prefect API that radflow keeps up between commands (see :mod:`radflow.flows._kept_api`)."""

from __future__ import annotations

import argparse
import datetime as dt


def cmd_api(args: argparse.Namespace) -> int:
    from radflow.flows._kept_api import kept_server, prefect_home, stop_kept

    home = prefect_home()
    if args.action == "stop":
        state = stop_kept(home)
        print(f"stopped the local Prefect API on {state['url']} (pid {state['pid']})" if state else
              f"no local Prefect API is kept for {home}")
        return 0
    state = kept_server(home)
    if state is None:
        print(f"no local Prefect API is kept for {home} (the next command starts one)")
        return 0
    since = dt.datetime.fromtimestamp(state["started"]).strftime("%Y-%m-%d %H:%M:%S")
    print(f"local Prefect API on {state['url']} (pid {state['pid']}, since {since}, stops after "
          f"{state['keep_s']:.0f} s without a command; PREFECT_HOME {home})")
    return 0


def add_parser(sub) -> None:
    sp = sub.add_parser("api", help="the local Prefect API kept between commands: status, or stop it now")
    sp.add_argument("action", nargs="?", choices=["status", "stop"], default="status")
    sp.set_defaults(func=cmd_api)
