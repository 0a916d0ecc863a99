"""Passages about the world's entities, in the FlashRAG / Search-R1 corpus form.

Each entity gets a main passage that states all of its facts in varied sentences; a
person who directed, founded or sings gets a second passage about that work; and
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
    "located_in": ["{x} is located in {y}.", "{x} lies in {y}.", "{x} is part of {y}."],
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
    fact_doc: dict[tuple[str, str], str]
    """(entity id, relation) -> id of the passage that states it."""

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


def _works_text(person: Entity, entities: Entities, rng: random.Random) -> str | None:
    works = []
    for other in entities.by_id.values():
        for relation, verb in (("directed_by", "directed"), ("founded_by", "founded"), ("lead_singer", "sang with")):
            if other.facts.get(relation) == person.id:
                works.append(f"{verb} {other.name}")
    if not works:
        return None
    rng.shuffle(works)
    return (
        f"Over the years {person.name} " + ", ".join(works[:-1]) + (" and " if len(works) > 1 else "") + works[-1] + "."
    )


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
    fact_doc: dict[tuple[str, str], str] = {}
    for entity in entities.by_id.values():
        doc_id = str(len(passages))
        passages.append(Passage(doc_id, entity.name, _main_text(entity, entities, rng)))
        for relation in entity.facts:
            fact_doc[(entity.id, relation)] = doc_id
        if entity.kind == "person" and (works := _works_text(entity, entities, rng)):
            passages.append(Passage(str(len(passages)), entity.name, works))
    for _ in range(num_distractors):
        title = f"{names.word()} Festival"
        passages.append(
            Passage(str(len(passages)), title, _festival_text(title, rng.randint(1950, 2024), entities, rng))
        )
    # Shuffle so that a passage's position says nothing about its kind, then renumber.
    rng.shuffle(passages)
    renumber = {p.id: str(i) for i, p in enumerate(passages)}
    passages = [Passage(renumber[p.id], p.title, p.text) for p in passages]
    return Corpus(passages=passages, fact_doc={k: renumber[v] for k, v in fact_doc.items()})
