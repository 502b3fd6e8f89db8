"""hardalign.train's public surface: every exported name exists and is documented."""

import inspect

import hardalign.train as train_api


def test_public_names_documented():
    for name in train_api.__all__:
        obj = getattr(train_api, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"hardalign.train.{name} has no docstring"
    assert callable(train_api.train) and train_api.TASKS["sbn"] == "hardalign.sbn:SBNTask"
