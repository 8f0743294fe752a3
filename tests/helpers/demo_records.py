"""Reading the demo generator's records in tests."""

from demo.languages import LANGUAGES


def language_of(record: dict):
    """The language of an align or sft record, from the code that ends its id ("sft-000012-zh")."""
    return LANGUAGES[record["id"].rsplit("-", 1)[1]]
