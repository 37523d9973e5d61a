"""The error names a user catches: ``DefinitionError`` for a bad chain definition,
``ChainsError`` for everything, and the old ``ChainError`` name still working."""

import pytest

import chains
from chains import Text


@chains.node
async def upper(t: Text) -> Text:
    return Text(text=t.text.upper())


def test_definition_error_is_a_chains_error_and_the_old_name_is_the_same_class() -> None:
    assert issubclass(chains.DefinitionError, chains.ChainsError)
    assert chains.ChainError is chains.DefinitionError
    assert "DefinitionError" in chains.__all__ and "ChainError" in chains.__all__


def test_a_bad_definition_raises_definition_error_caught_by_either_name() -> None:
    for catch in (chains.DefinitionError, chains.ChainError, chains.ChainsError):
        with pytest.raises(catch) as e:

            @chains.chain
            def bad(x: Text) -> Text:
                return upper(x, x)  # one input too many

        assert type(e.value) is chains.DefinitionError
        assert "upper" in str(e.value)
