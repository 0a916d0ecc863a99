"""The three question families and, for each question, the expert's search plan.

Families mirror the generators of the query-recycling paper:

* ``chain``: a relation chain of 1 to ``max_hops`` hops from a named entity
  ("In which country is the city where the director of Vemora Sul was born?").
* ``iterative``: the chain starts from a description instead of a name ("the film that
  Kalo Ven directed in 1994"), so the first search is by description and every later
  entity is named only in the passage the previous search returned.
* ``comparison``: two entities' attributes compared ("Who was born earlier, A or B?",
  "Are A and B located in the same country?"); the expert looks both up in one turn.

The plan is structured (what each search is about, which passage answers it and what it
teaches) so that tests can replay it against the corpus and so that SFT data can render
it with any retriever.
"""

from __future__ import annotations

import functools
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from lit_search_rl.data.synthetic.corpus import Corpus
from lit_search_rl.data.synthetic.entities import Entities, Entity
from lit_search_rl.data.synthetic.schema import FORBIDDEN_TURNS, RELATIONS, YEAR, relations_from

Family = Literal["chain", "iterative", "comparison"]
FAMILIES: tuple[Family, ...] = ("chain", "iterative", "comparison")
Rule = Literal["last", "earlier", "later", "same"]


@dataclass
class Search:
    """One query of the expert.

    Attributes:
        query: the text sent to the search engine.
        about: the name the query is built from; known from the question or an earlier passage.
        doc_ids: the passages that state what it looks for, the entity's own passage first.
        learns: what that passage tells (a name or a year), verbatim in its text.
    """

    query: str
    about: str
    doc_ids: list[str]
    learns: str


@dataclass
class Step:
    """One turn of the expert: a thought, then either searches or the final answer."""

    think: str
    searches: list[Search] = field(default_factory=list)
    answer: str | None = None


@dataclass
class Question:
    """A question with its answer and the expert's plan.

    Attributes:
        question: the question text.
        golden_answers: accepted answers (FlashRAG form).
        family: which generator made it.
        hops: number of facts that must be looked up.
        rule: how the answer follows from what the searches teach: the ``last`` thing learnt, the
            ``earlier`` / ``later`` of the two entities asked about, or whether both searches learnt the
            ``same`` thing ("yes" / "no").
        steps: the expert's turns.
    """

    question: str
    golden_answers: list[str]
    family: Family
    hops: int
    rule: Rule
    steps: list[Step]


@functools.cache
def relation_paths(length: int) -> list[tuple[str, ...]]:
    """All relation chains of exactly ``length`` hops; a year can only end a chain."""
    paths: list[tuple[str, ...]] = []

    def extend(kind: str, path: tuple[str, ...]) -> None:
        if len(path) == length:
            paths.append(path)
            return
        for relation in relations_from(kind):
            if path and (path[-1], relation.name) in FORBIDDEN_TURNS:
                continue
            if relation.target == YEAR and len(path) + 1 < length:
                continue
            extend(relation.target, (*path, relation.name))

    for kind in {r.source for r in RELATIONS.values()}:
        extend(kind, ())
    return sorted(paths)


@functools.cache
def paths_from(kind: str, length: int) -> list[tuple[str, ...]]:
    """Relation chains of ``length`` hops that start at an entity of ``kind``."""
    return [p for p in relation_paths(length) if RELATIONS[p[0]].source == kind]


def _gives_away(question: str, answer: str) -> bool:
    """Whether the answer is written in the question itself."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", question) is not None


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


def _forward(
    entities: Entities, corpus: Corpus, start: Entity, path: tuple[str, ...], opening: str, start_text: str
) -> tuple[str, list[Step], str]:
    """Question text, expert steps and answer for a relation chain from ``start``.

    ``start_text`` is how the question refers to the start entity (its name, or a description);
    ``opening`` is what the expert already learnt about it (empty for a named start).
    """
    subject = start_text
    for relation in path[:-1]:
        subject = RELATIONS[relation].noun.format(x=subject)
    question = RELATIONS[path[-1]].question.format(x=subject)

    steps: list[Step] = []
    said = opening
    current = start
    for relation_name in path:
        relation = RELATIONS[relation_name]
        need = (
            f"Now I need {relation.noun.format(x=current.name)}."
            if said
            else (f"I need {relation.noun.format(x=current.name)}.")
        )
        value = entities.value(current, relation_name)
        search = Search(
            query=f"{current.name} {relation.keyword}",
            about=current.name,
            doc_ids=corpus.fact_docs[(current.id, relation_name)],
            learns=value,
        )
        steps.append(Step(think=f"{said} {need}".strip(), searches=[search]))
        said = relation.statement.format(x=current.name, y=value)
        if relation.target != YEAR:
            current = entities.by_id[str(current.facts[relation_name])]
    steps.append(Step(think=said, answer=value))
    return question, steps, value


def chain_question(entities: Entities, corpus: Corpus, rng: random.Random, hops: int) -> Question | None:
    """A relation chain of ``hops`` hops from a random named entity, or None if this draw is degenerate."""
    path = rng.choice(relation_paths(hops))
    start = rng.choice(entities.of_kind(RELATIONS[path[0]].source))
    question, steps, answer = _forward(entities, corpus, start, path, opening="", start_text=start.name)
    if _gives_away(question, answer):  # e.g. the capital of the country of a capital city
        return None
    return Question(question, [answer], "chain", hops, "last", steps)


# Descriptions that pick out one entity by an inverse relation and a year. The key is
# (relation to the named entity, year relation); the texts take the name {n} and year {y}.
_DESCRIPTIONS = {
    "film": ("directed_by", "release_year", "the film that {n} directed in {y}", "{n} directed film {y}"),
    "company": ("founded_by", "founding_year", "the company that {n} founded in {y}", "{n} founded company {y}"),
    "band": ("formed_in", "formation_year", "the band formed in {n} in {y}", "band formed in {n} in {y}"),
    "person": ("born_in", "birth_year", "the person born in {n} in {y}", "person born in {n} in {y}"),
}


def _unique_descriptions(entities: Entities, kind: str) -> list[Entity]:
    named, year, _, _ = _DESCRIPTIONS[kind]
    groups: dict[tuple, list[Entity]] = defaultdict(list)
    for entity in entities.of_kind(kind):
        groups[(entity.facts[named], entity.facts[year])].append(entity)
    return [group[0] for group in groups.values() if len(group) == 1]


def iterative_question(entities: Entities, corpus: Corpus, rng: random.Random, hops: int) -> Question | None:
    """A description lookup followed by ``hops - 1`` forward hops; ``hops`` is at least 2."""
    kind = rng.choice([k for k in _DESCRIPTIONS if paths_from(k, hops - 1)])
    candidates = _unique_descriptions(entities, kind)
    if not candidates:
        return None
    found = rng.choice(candidates)
    named_rel, year_rel, noun, query = _DESCRIPTIONS[kind]
    name, year = entities.value(found, named_rel), entities.value(found, year_rel)
    description = noun.format(n=name, y=year)
    first = Step(
        think=f"I need to find {description}.",
        searches=[Search(query.format(n=name, y=year), name, corpus.fact_docs[(found.id, named_rel)], found.name)],
    )
    opening = f"{_capitalise(description)} is {found.name}."
    path = rng.choice(paths_from(kind, hops - 1))
    question, steps, answer = _forward(entities, corpus, found, path, opening=opening, start_text=description)
    if _gives_away(question, answer) or answer == found.name:  # e.g. the founding year of "the company founded in Y"
        return None
    return Question(question, [answer], "iterative", hops, "last", [first, *steps])


_COMPARISONS = [
    ("person", "birth_year", "Who was born {order}, {a} or {b}?"),
    ("company", "founding_year", "Which company was founded {order}, {a} or {b}?"),
    ("film", "release_year", "Which film was released {order}, {a} or {b}?"),
    ("band", "formation_year", "Which band was formed {order}, {a} or {b}?"),
    ("city", "located_in", "Are {a} and {b} located in the same country?"),
    ("person", "born_in", "Were {a} and {b} born in the same city?"),
]


def comparison_question(entities: Entities, corpus: Corpus, rng: random.Random) -> Question | None:
    """Two entities of one kind compared on one attribute; both are looked up in one turn."""
    kind, relation_name, template = rng.choice(_COMPARISONS)
    relation = RELATIONS[relation_name]
    pool = entities.of_kind(kind)
    a = rng.choice(pool)
    if relation.target == YEAR:
        rule: Rule = rng.choice(["earlier", "later"])
        b = rng.choice(pool)
        if a is b or a.facts[relation_name] == b.facts[relation_name]:
            return None
        first = a if a.facts[relation_name] < b.facts[relation_name] else b  # type: ignore[operator]
        answer = first.name if rule == "earlier" else (b if first is a else a).name
        question = template.format(order=rule, a=a.name, b=b.name)
    else:
        rule = "same"
        # Half of the pairs share the attribute, so "yes" and "no" are equally likely.
        same = [e for e in pool if e is not a and e.facts[relation_name] == a.facts[relation_name]]
        others = [e for e in pool if e.facts[relation_name] != a.facts[relation_name]]
        choices = same if (same and rng.random() < 0.5) or not others else others
        if not choices:
            return None
        b = rng.choice(choices)
        answer = "yes" if a.facts[relation_name] == b.facts[relation_name] else "no"
        question = template.format(a=a.name, b=b.name)
    searches = [
        Search(
            f"{e.name} {relation.keyword}",
            e.name,
            corpus.fact_docs[(e.id, relation_name)],
            entities.value(e, relation_name),
        )
        for e in (a, b)
    ]
    needs = " and ".join(relation.noun.format(x=e.name) for e in (a, b))
    said = " ".join(relation.statement.format(x=s.about, y=s.learns) for s in searches)
    steps = [Step(think=f"I need {needs}.", searches=searches), Step(think=said, answer=answer)]
    return Question(question, [answer], "comparison", 2, rule, steps)
