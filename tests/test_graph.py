import pytest

import varstore as vs


def test_default_names_follow_tensorflow():
    a = vs.Variable(vs.zeros([1]))
    b = vs.Variable(vs.zeros([1]))
    w = vs.Variable(vs.zeros([1]), name="w")
    w1 = vs.Variable(vs.zeros([1]), name="w")
    w2 = vs.Variable(vs.zeros([1]), name="w")
    assert [a.name, b.name, w.name, w1.name, w2.name] == [
        "Variable",
        "Variable_1",
        "w",
        "w_1",
        "w_2",
    ]


def test_names_are_unique_case_insensitively_as_in_tensorflow():
    vs.Variable(vs.zeros([1]), name="w")
    assert vs.Variable(vs.zeros([1]), name="W").name == "W_1"


def test_name_scope_prefixes_and_nests():
    with vs.name_scope("layer1"):
        w = vs.Variable(vs.zeros([1]), name="w")
        with vs.name_scope("inner"):
            b = vs.Variable(vs.zeros([1]), name="b")
    assert w.name == "layer1/w"
    assert b.name == "layer1/inner/b"


def test_reentering_a_scope_name_makes_it_unique_unless_it_ends_with_slash():
    with vs.name_scope("layer1"):
        vs.Variable(vs.zeros([1]), name="w")
    with vs.name_scope("layer1"):
        w = vs.Variable(vs.zeros([1]), name="w")
    with vs.name_scope("layer1/"):
        w_again = vs.Variable(vs.zeros([1]), name="w")
    assert w.name == "layer1_1/w"
    assert w_again.name == "layer1/w_1"


def test_collections_and_trainable():
    a = vs.Variable(vs.zeros([1]), name="a")
    b = vs.Variable(vs.zeros([1]), name="b", trainable=False)
    c = vs.Variable(vs.zeros([1]), name="c", collections=["mine"])
    assert vs.global_variables() == [a, b]
    assert vs.trainable_variables() == [a, c]
    assert vs.get_default_graph().get_collection("mine") == [c]
    assert vs.get_default_graph().get_collection(vs.GraphKeys.LOCAL_VARIABLES) == []


def test_graph_as_default_isolates_variables():
    g = vs.Graph()
    with g.as_default():
        v = vs.Variable(vs.zeros([2]), name="v")
        assert vs.get_default_graph() is g
    assert v.graph is g
    assert vs.global_variables() == []
    assert vs.global_variables(g) == [v]


def test_reset_default_graph_starts_fresh():
    vs.Variable(vs.zeros([1]), name="v")
    vs.reset_default_graph()
    assert vs.global_variables() == []
    assert vs.Variable(vs.zeros([1]), name="v").name == "v"


def test_reset_inside_as_default_is_an_error():
    with vs.Graph().as_default():
        with pytest.raises(vs.GraphError, match="outside every such block"):
            vs.reset_default_graph()


@pytest.mark.parametrize(
    "bad, why",
    [
        ("", "empty"),
        ("/a", "starts or ends with '/'"),
        ("a/", "starts or ends with '/'"),
        ("a//b", r"empty part \('//'\)"),
        ("a/../b", "escape"),
        (".", "escape"),
        ("a b", "' '"),
        ("a\x00b", "x00"),
        ("a\nb", r"\\n"),
        ("x" * 513, "513 bytes"),
        ("ü", "'ü'"),
    ],
)
def test_invalid_names_are_rejected_with_the_rule(bad, why):
    with pytest.raises(vs.InvalidNameError, match=why) as info:
        vs.Variable(vs.zeros([1]), name=bad)
    assert "A valid name is" in str(info.value)
    assert vs.global_variables() == []


def test_invalid_scope_is_rejected():
    with pytest.raises(vs.InvalidNameError, match="name scope"):
        with vs.name_scope("a b"):
            pass


def test_a_name_cannot_be_both_a_variable_and_a_scope():
    vs.Variable(vs.zeros([1]), name="a/b")
    with pytest.raises(vs.InvalidNameError, match="'a' is already the scope of 'a/b'"):
        vs.Variable(vs.zeros([1]), name="a")
    vs.Variable(vs.zeros([1]), name="c")
    with pytest.raises(vs.InvalidNameError, match="inside 'c', which is already a variable"):
        vs.Variable(vs.zeros([1]), name="c/d")


def test_name_scope_named_like_a_variable_is_made_unique():
    vs.Variable(vs.zeros([1]), name="a")
    with vs.name_scope("a"):
        v = vs.Variable(vs.zeros([1]), name="b")
    assert v.name == "a_1/b"


def test_get_variable_lists_close_names():
    vs.Variable(vs.zeros([1]), name="weights")
    with pytest.raises(vs.NotFoundError, match="Did you mean 'weights'"):
        vs.get_default_graph().get_variable("weigths")


def test_variable_attributes():
    v = vs.Variable(vs.ones([3, 2], dtype="int32"), name="v", trainable=False)
    assert v.shape == (3, 2)
    assert v.dtype == "int32"
    assert not v.trainable
    assert v.graph is vs.get_default_graph()
    assert "v" in repr(v) and "(3, 2)" in repr(v)


def test_a_failed_declaration_gives_its_name_back():
    with pytest.raises(vs.PlacementError):
        vs.Variable(vs.zeros([1]), name="w", device="/gpu:0")
    with pytest.raises(vs.InvalidNameError):
        vs.Variable(vs.zeros([1]), name="w/x") and vs.Variable(vs.zeros([1]), name="w")
    assert vs.get_default_graph().get_variable("w/x").name == "w/x"
    assert vs.Variable(vs.zeros([1]), name="v").name == "v"
    vs.reset_default_graph()
    with pytest.raises(vs.PlacementError):
        vs.Variable(vs.zeros([1]), name="w", device="/gpu:0")
    assert vs.Variable(vs.zeros([1]), name="w").name == "w"
