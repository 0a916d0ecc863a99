"""Passages about the world's entities, in the FlashRAG / Search-R1 corpus form.

Each entity gets a main passage that states all of its facts in varied sentences; a
person who directed, founded or sings gets a second passage about that work, and a city a
second passage about who was born, formed or is based there (as encyclopedias list them); and
distractor passages (festivals) mention several entities without stating any fact a
question asks for, so retrieval has to tell them apart.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from lit_search_rl.data.synthetic.entities import Entities, Entity
from lit_search_rl.data.synthetic.names import NameFactory

_INTRO = {
    "person": ["{x} is a {f}.", "{x} was a well-known {f}.", "{x} worked as a {f} for many years."],
    "city": ["{x} is a city.", "{x} is a mid-sized city with an old harbour.", "{x} is a town known for its markets."],
    "country": ["{x} is a country.", "{x} is a small republic.", "{x} is a country with a long coastline."],
    "company": ["{x} is a {f} company.", "{x} is a firm in the {f} business.", "{x} operates in {f}."],
    "film": ["{x} is a {f} film.", "{x} is a {f} picture.", "{x} is a feature film, a {f}."],
    "band": ["{x} is a {f} band.", "{x} is a group that plays {f}.", "{x} is a {f} act."],
}

_REFERENCE = {"person": "{x}", "city": "The city", "country": "The country", "company": "The company",
              "film": "The film", "band": "The band"}  # fmt: skip

_FACTS = {
    "born_in": ["{x} was born in {y}.", "{x} grew up in {y}, where they were born.", "{x} is a native of {y}."],
    "birth_year": ["{x} was born in {y}.", "{x} came into the world in {y}.", "{x}'s year of birth is {y}."],
    # Each says "country": a query "<city> country" must find the city's passage before the country passages.
    "located_in": [
        "{x} is located in the country of {y}.",
        "{x} lies in {y}, its country.",
        "{x} is part of the country {y}.",
    ],
    "capital": ["The capital of {x} is {y}.", "{x} is governed from its capital, {y}.", "{y} is the capital."],
    "founded_by": ["{x} was founded by {y}.", "{x} was started by {y}.", "{y} is the founder of {x}."],
    "headquartered_in": ["{x} is headquartered in {y}.", "{x} has its head office in {y}.", "{x} is based in {y}."],
    "founding_year": ["{x} was founded in {y}.", "{x} was established in {y}.", "{x} dates from {y}."],
    "directed_by": ["{x} was directed by {y}.", "{y} directed {x}.", "{x} is the work of director {y}."],
    "produced_by": ["{x} was produced by {y}.", "{y} produced {x}.", "{x} was financed and produced by {y}."],
    "release_year": ["{x} was released in {y}.", "{x} premiered in {y}.", "{x} came out in {y}."],
    "formed_in": ["{x} was formed in {y}.", "{x} got together in {y}.", "{x} started out in {y}."],
    "lead_singer": ["The lead singer of {x} is {y}.", "{y} sings lead for {x}.", "{x} is fronted by {y}."],
    "formation_year": ["{x} was formed in {y}.", "{x} has played together since {y}.", "{x} was founded in {y}."],
}

# A sentence whose subject is not named (capital's third template) must name the subject
# elsewhere; the main passage always starts with the intro, which does.


@dataclass(frozen=True)
class Passage:
    """One corpus row. ``contents`` is ``"Title\\ntext"`` as FlashRAG and Search-R1 expect."""

    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        return f"{self.title}\n{self.text}"

    def to_row(self) -> dict[str, str]:
        """The JSON-lines row ``{"id", "contents"}``."""
        return {"id": self.id, "contents": self.contents}


@dataclass
class Corpus:
    """All passages, and which passage states each (entity, relation) fact."""

    passages: list[Passage]
    fact_docs: dict[tuple[str, str], list[str]]
    """(entity id, relation) -> ids of the passages that state it, the entity's own passage first."""

    def by_id(self) -> dict[str, Passage]:
        return {p.id: p for p in self.passages}


def _main_text(entity: Entity, entities: Entities, rng: random.Random) -> str:
    sentences = [rng.choice(_INTRO[entity.kind]).format(x=entity.name, f=entity.flavour)]
    sentences[0] = re.sub(r"\ba (?=[aeiou])", "an ", sentences[0])  # "an engineer"
    relations = list(entity.facts)
    rng.shuffle(relations)
    for relation in relations:
        template = rng.choice(_FACTS[relation])
        # Later sentences may refer to the subject as "The film" etc.; the name is in the intro.
        subject = entity.name if rng.random() < 0.6 else _REFERENCE[entity.kind].format(x=entity.name)
        if template.startswith("{x}'s") or not template.startswith("{x}"):
            subject = entity.name
        sentences.append(template.format(x=subject, y=entities.value(entity, relation)))
    return " ".join(sentences)


def _linked(entities: Entities) -> dict[str, list[Entity]]:
    """Target entity id -> entities with a fact pointing at it, in id order (for second passages)."""
    linked: dict[str, list[Entity]] = {}
    for entity in entities.by_id.values():
        for target in dict.fromkeys(t for t in entity.facts.values() if isinstance(t, str)):
            linked.setdefault(target, []).append(entity)
    return linked


def _listing(items: list[str]) -> str:
    return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1]


def _works_text(person: Entity, linked: dict[str, list[Entity]], rng: random.Random) -> tuple[str, list] | None:
    """A second passage about what a person made, and the (entity, relation) facts it states."""
    works, facts = [], []
    for other in linked.get(person.id, []):
        if other.facts.get("directed_by") == person.id:
            works.append(f"directed {other.name} ({other.facts['release_year']})")
            facts += [(other.id, "directed_by"), (other.id, "release_year")]
        if other.facts.get("founded_by") == person.id:
            works.append(f"founded {other.name} in {other.facts['founding_year']}")
            facts += [(other.id, "founded_by"), (other.id, "founding_year")]
        if other.facts.get("lead_singer") == person.id:
            works.append(f"sang lead for {other.name}")
            facts.append((other.id, "lead_singer"))
    if not works:
        return None
    rng.shuffle(works)
    return f"Over the years {person.name} {_listing(works)}.", facts


def _residents_text(city: Entity, linked: dict[str, list[Entity]], rng: random.Random) -> tuple[str, list] | None:
    """A second passage about who was born, formed or is based in a city, and the facts it states."""
    sentences, facts = [], []
    here = linked.get(city.id, [])
    people = [e for e in here if e.kind == "person" and e.facts["born_in"] == city.id]
    bands = [e for e in here if e.kind == "band" and e.facts["formed_in"] == city.id]
    companies = [e for e in here if e.kind == "company" and e.facts["headquartered_in"] == city.id]
    if people:
        born = [f"{p.name} (born {p.facts['birth_year']})" for p in people]
        sentences.append(f"People born in {city.name} include {_listing(born)}.")
        facts += [(p.id, r) for p in people for r in ("born_in", "birth_year")]
    if bands:
        formed = [f"{b.name} (formed {b.facts['formation_year']})" for b in bands]
        sentences.append(f"Bands formed in {city.name} include {_listing(formed)}.")
        facts += [(b.id, r) for b in bands for r in ("formed_in", "formation_year")]
    if companies:
        sentences.append(f"Companies based in {city.name} include {_listing([c.name for c in companies])}.")
        facts += [(c.id, "headquartered_in") for c in companies]
    if not sentences:
        return None
    rng.shuffle(sentences)
    return " ".join(sentences), facts


def _festival_text(title: str, year: int, entities: Entities, rng: random.Random) -> str:
    city = rng.choice(entities.of_kind("city"))
    person = rng.choice(entities.of_kind("person"))
    film = rng.choice(entities.of_kind("film"))
    band = rng.choice(entities.of_kind("band"))
    company = rng.choice(entities.of_kind("company"))
    return (
        f"The {title} took place in {city.name} in {year}. {person.name} presented {film.name} there, "
        f"{band.name} played on the closing night, and {company.name} paid for the stage."
    )


def build_corpus(entities: Entities, num_distractors: int, rng: random.Random, names: NameFactory) -> Corpus:
    """Write every passage of the world; ids are consecutive integers as strings, as in wiki-18."""
    passages: list[Passage] = []
    fact_docs: dict[tuple[str, str], list[str]] = {}

    def add(title: str, text: str, facts: list[tuple[str, str]]) -> None:
        doc_id = str(len(passages))
        passages.append(Passage(doc_id, title, text))
        for fact in facts:
            fact_docs.setdefault(fact, []).append(doc_id)

    # Main passages first, so that each fact's first passage is its entity's own.
    for entity in entities.by_id.values():
        add(entity.name, _main_text(entity, entities, rng), [(entity.id, r) for r in entity.facts])
    linked = _linked(entities)
    for entity in entities.by_id.values():
        second = {"person": _works_text, "city": _residents_text}.get(entity.kind)
        if second is not None and (found := second(entity, linked, rng)) is not None:
            add(entity.name, *found)
    for _ in range(num_distractors):
        title = f"{names.word()} Festival"
        add(title, _festival_text(title, rng.randint(1950, 2024), entities, rng), [])
    # Shuffle so that a passage's position says nothing about its kind, then renumber.
    rng.shuffle(passages)
    renumber = {p.id: str(i) for i, p in enumerate(passages)}
    passages = [Passage(renumber[p.id], p.title, p.text) for p in passages]
    return Corpus(passages=passages, fact_docs={k: [renumber[d] for d in v] for k, v in fact_docs.items()})
