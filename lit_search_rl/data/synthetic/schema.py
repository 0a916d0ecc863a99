"""The typed schema of the synthetic world: entity kinds and the relations between them.

A relation points from an entity of one kind to an entity of another kind, or to a
year. The question generators and the expert trajectories only ever read this table,
so a new relation is one entry here plus its sentence templates in ``corpus.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["person", "city", "country", "company", "film", "band"]
KINDS: tuple[Kind, ...] = ("country", "city", "person", "company", "film", "band")

YEAR = "year"
"""Target of attribute relations (birth year, founding year, release year)."""


@dataclass(frozen=True)
class Relation:
    """One typed relation of the world.

    Attributes:
        name: identifier, also the key in ``Entity.facts``.
        source: kind of the entity that has the fact.
        target: kind of the entity it points to, or ``"year"``.
        noun: noun phrase for the related thing, ``{x}`` is the source ("the director of {x}").
        question: question asking for the target, ``{x}`` is the source ("Who directed {x}?").
        keyword: the words an expert searcher adds to the source name ("director").
        statement: the sentence an expert thinks once it has read the fact ("{x} was directed by {y}.").
    """

    name: str
    source: Kind
    target: str
    noun: str
    question: str
    keyword: str
    statement: str


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in [
        Relation(
            "born_in",
            "person",
            "city",
            "the birthplace of {x}",
            "In which city was {x} born?",
            "birthplace",
            "{x} was born in {y}.",
        ),
        Relation(
            "birth_year",
            "person",
            YEAR,
            "the birth year of {x}",
            "In what year was {x} born?",
            "born year",
            "{x} was born in {y}.",
        ),
        Relation(
            "located_in",
            "city",
            "country",
            "the country of {x}",
            "In which country is {x} located?",
            "country",
            "{x} is in {y}.",
        ),
        Relation(
            "capital",
            "country",
            "city",
            "the capital of {x}",
            "What is the capital of {x}?",
            "capital",
            "The capital of {x} is {y}.",
        ),
        Relation(
            "founded_by",
            "company",
            "person",
            "the founder of {x}",
            "Who founded {x}?",
            "founder",
            "{x} was founded by {y}.",
        ),
        Relation(
            "headquartered_in",
            "company",
            "city",
            "the headquarters city of {x}",
            "In which city is {x} headquartered?",
            "headquarters",
            "{x} is headquartered in {y}.",
        ),
        Relation(
            "founding_year",
            "company",
            YEAR,
            "the founding year of {x}",
            "In what year was {x} founded?",
            "founded year",
            "{x} was founded in {y}.",
        ),
        Relation(
            "directed_by",
            "film",
            "person",
            "the director of {x}",
            "Who directed {x}?",
            "director",
            "{x} was directed by {y}.",
        ),
        Relation(
            "produced_by",
            "film",
            "company",
            "the producer of {x}",
            "Which company produced {x}?",
            "producer company",
            "{x} was produced by {y}.",
        ),
        Relation(
            "release_year",
            "film",
            YEAR,
            "the release year of {x}",
            "In what year was {x} released?",
            "release year",
            "{x} was released in {y}.",
        ),
        Relation(
            "formed_in",
            "band",
            "city",
            "the city where {x} was formed",
            "In which city was {x} formed?",
            "formed city",
            "{x} was formed in {y}.",
        ),
        Relation(
            "lead_singer",
            "band",
            "person",
            "the lead singer of {x}",
            "Who is the lead singer of {x}?",
            "lead singer",
            "The lead singer of {x} is {y}.",
        ),
        Relation(
            "formation_year",
            "band",
            YEAR,
            "the formation year of {x}",
            "In what year was {x} formed?",
            "formed year",
            "{x} was formed in {y}.",
        ),
    ]
}

# Following `capital` and then `located_in` returns to the country we came from; such
# chains are legal but ask nothing, so the chain generator never takes that turn.
FORBIDDEN_TURNS: frozenset[tuple[str, str]] = frozenset({("capital", "located_in")})


def relations_from(kind: str) -> list[Relation]:
    """Relations whose source is ``kind``, in schema order."""
    return [r for r in RELATIONS.values() if r.source == kind]


def longest_chain() -> int:
    """Number of hops in the longest relation chain the schema allows without a forbidden turn.

    The schema has no cycle once forbidden turns are removed, so a depth-first search ends.
    """

    def depth(kind: str, previous: str | None) -> int:
        best = 0
        for r in relations_from(kind):
            if previous is not None and (previous, r.name) in FORBIDDEN_TURNS:
                continue
            best = max(best, 1 + (0 if r.target == YEAR else depth(r.target, r.name)))
        return best

    return max(depth(kind, None) for kind in KINDS)
