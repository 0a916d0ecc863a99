"""Fictional entities and the facts that link them, drawn from the schema in ``schema.py``."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lit_search_rl.data.synthetic.names import NameFactory

_OCCUPATIONS = ["painter", "engineer", "novelist", "physician", "architect", "composer", "chemist", "sculptor"]
_GENRES = ["drama", "comedy", "thriller", "western", "musical", "documentary"]
_STYLES = ["folk", "jazz", "rock", "choral", "electronic", "blues"]
_INDUSTRIES = ["shipping", "textile", "software", "mining", "publishing", "aviation"]
_COMPANY_SUFFIXES = ["Works", "Industries", "Group", "Labs", "Holdings"]
_BAND_SUFFIXES = ["Quartet", "Collective", "Ensemble", "Orchestra"]


@dataclass
class Entity:
    """One thing in the world.

    Attributes:
        id: stable identifier such as ``"film-0003"``.
        kind: one of the schema's kinds.
        name: the unique display name, also the title of its passages.
        facts: relation name -> target entity id, or the year for attribute relations.
        flavour: a descriptive word (occupation, genre, ...) that carries no question.
    """

    id: str
    kind: str
    name: str
    facts: dict[str, str | int] = field(default_factory=dict)
    flavour: str = ""


@dataclass
class Entities:
    """All entities of a world, by id, with lookups the generators need."""

    by_id: dict[str, Entity]

    def of_kind(self, kind: str) -> list[Entity]:
        """Entities of one kind, in id order."""
        if not hasattr(self, "_kinds"):
            self._kinds: dict[str, list[Entity]] = {}
            for e in self.by_id.values():
                self._kinds.setdefault(e.kind, []).append(e)
        return self._kinds.get(kind, [])

    def value(self, entity: Entity, relation: str) -> str:
        """The display form of a fact: the target's name, or the year as text."""
        target = entity.facts[relation]
        return str(target) if isinstance(target, int) else self.by_id[target].name


def _make(kind: str, count: int, names: NameFactory, rng: random.Random) -> list[Entity]:
    entities = []
    for i in range(count):
        if kind == "person":
            name, flavour = f"{names.word()} {names.word()}", rng.choice(_OCCUPATIONS)
        elif kind == "company":
            name, flavour = f"{names.word()} {rng.choice(_COMPANY_SUFFIXES)}", rng.choice(_INDUSTRIES)
        elif kind == "film":
            name, flavour = f"{names.word()} {names.word(1, 2)}", rng.choice(_GENRES)
        elif kind == "band":
            name, flavour = f"The {names.word()} {rng.choice(_BAND_SUFFIXES)}", rng.choice(_STYLES)
        else:  # city, country
            name, flavour = names.word(), ""
        entities.append(Entity(id=f"{kind}-{i:04d}", kind=kind, name=name, flavour=flavour))
    return entities


def build_entities(
    rng: random.Random,
    names: NameFactory,
    num_countries: int,
    num_cities: int,
    num_people: int,
    num_companies: int,
    num_films: int,
    num_bands: int,
) -> Entities:
    """Draw every entity and link them with the schema's relations.

    Years are drawn so that facts stay plausible (a company is founded after its founder is
    twenty, a film is produced by a company that already exists), which keeps the text
    readable; nothing downstream depends on it.
    """
    countries = _make("country", num_countries, names, rng)
    cities = _make("city", num_cities, names, rng)
    people = _make("person", num_people, names, rng)
    companies = _make("company", num_companies, names, rng)
    films = _make("film", num_films, names, rng)
    bands = _make("band", num_bands, names, rng)

    # Every country gets at least one city so that it has a capital.
    for i, city in enumerate(cities):
        country = countries[i] if i < len(countries) else rng.choice(countries)
        city.facts["located_in"] = country.id
    for country in countries:
        own = [c for c in cities if c.facts["located_in"] == country.id]
        country.facts["capital"] = rng.choice(own).id

    for person in people:
        person.facts["born_in"] = rng.choice(cities).id
        person.facts["birth_year"] = rng.randint(1890, 1990)

    for company in companies:
        founder = rng.choice(people)
        company.facts["founded_by"] = founder.id
        company.facts["headquartered_in"] = rng.choice(cities).id
        company.facts["founding_year"] = min(2020, int(founder.facts["birth_year"]) + rng.randint(20, 50))

    for film in films:
        producer = rng.choice(companies)
        film.facts["directed_by"] = rng.choice(people).id
        film.facts["produced_by"] = producer.id
        film.facts["release_year"] = min(2024, int(producer.facts["founding_year"]) + rng.randint(1, 40))

    for band in bands:
        band.facts["formed_in"] = rng.choice(cities).id
        band.facts["lead_singer"] = rng.choice(people).id
        band.facts["formation_year"] = rng.randint(1950, 2020)

    everything = countries + cities + people + companies + films + bands
    return Entities(by_id={e.id: e for e in everything})
