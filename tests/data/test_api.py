"""The public surface of hardalign.data: every exported name resolves and is documented."""

import hardalign.data as data


def test_every_public_name_has_a_docstring():
    assert sorted(data.__all__) == sorted(data._EXPORTS)
    for name in data.__all__:
        obj = getattr(data, name)
        if callable(obj):
            assert (obj.__doc__ or "").strip(), name


def test_unknown_attribute_is_an_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute"):
        data.not_a_name
