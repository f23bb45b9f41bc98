from radflow.storage.duplicates import split_duplicates


def test_first_copy_in_uri_order_is_primary():
    rows = [{"uri": u, "sop_key": k} for u, k in [("b", "x"), ("a", "x"), ("c", "y"), ("d", ""), ("e", ""), ("f", "z")]]
    primaries, dups = split_duplicates(rows, stored={"z"})
    assert [r["uri"] for r in primaries] == ["a", "c", "d", "e"]
    assert [r["uri"] for r in dups] == ["b", "f"]
