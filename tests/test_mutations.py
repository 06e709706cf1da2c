"""The mutation check (scripts/mutations.py) stays runnable: every planted bug still finds, in
today's source, exactly the code it was written against. (Running the mutants takes minutes:
`python scripts/mutations.py`.)"""

import pytest

from scripts import mutations


@pytest.mark.parametrize("m", mutations.MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_applies_to_the_current_source(m):
    mutations.locate(mutations.ROOT, m)  # LookupError names the pattern to update


def test_there_are_the_seven_planted_bugs():
    assert len(mutations.MUTATIONS) == 7
