"""Synthetic PII, labelled, for the redaction recall table; and a tiny spaCy NER trained on
synthetic sentences, to prove the Presidio wiring without downloading a model.

The recall of the Presidio pass with this pipeline says how the wiring and the recognizers
do on this synthetic set only; a production pipeline (spaCy's own en_core_web_lg, installed
by the operator) has its own recall, to be measured the same way.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Names and places are split: the NER is trained on the first lists and measured on the
# second, so the table shows what it learnt (capitalised tokens in context), not recall.
TRAIN_FIRST = ("Anna", "Peter", "Maria", "James", "Sofia", "Lukas", "Emma", "Oliver", "Chloe",
               "Mateo", "Hannah", "Noah", "Julia", "Ethan", "Laura", "Felix")  # fmt: skip
TRAIN_LAST = ("Miller", "Schmidt", "Brown", "Garcia", "Novak", "Jensen", "Rossi", "Dubois",
              "Wilson", "Becker", "Taylor", "Kowalski", "Silva", "Fischer")  # fmt: skip
EVAL_FIRST = ("John", "Mary", "Ahmed", "Ingrid", "Carlos", "Yuki", "Priya", "Thomas", "Elena",
              "Kevin", "Fatima", "Lars")  # fmt: skip
EVAL_LAST = ("Smith", "Johnson", "Khan", "Larsen", "Lopez", "Tanaka", "Patel", "Weber",
             "Ivanova", "Murphy", "Haddad", "Berg")  # fmt: skip
TRAIN_CITIES = ("Paris", "Madrid", "Vienna", "Oslo", "Boston", "Munich", "Lyon", "Dublin")
EVAL_CITIES = ("London", "Berlin", "Chicago", "Hamburg", "Leeds", "Toronto", "Rome", "Zurich")
STREETS = ("Baker", "High", "Church", "Station", "Park", "Mill", "Queen", "Oak")


@dataclass(frozen=True)
class Sample:
    """One text with one planted value of a category."""

    category: str
    text: str
    value: str


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _luhn_card(rng: random.Random) -> str:
    body = "4" + _digits(rng, 14)
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    check = (10 - total % 10) % 10
    number = body + str(check)
    return " ".join(number[i : i + 4] for i in range(0, 16, 4))


def _iban(rng: random.Random) -> str:
    bban = _digits(rng, 18)
    numeric = bban + "131400"  # D=13 E=14, then "00"
    check = 98 - int(numeric) % 97
    compact = f"DE{check:02d}{bban}"
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def _tax_id(rng: random.Random) -> str:
    return str(rng.randint(1, 9)) + _digits(rng, 10)


MONTHS = ("January", "March", "April", "June", "August", "October", "December")
Maker = Callable[[random.Random], tuple[str, str]]
# category -> makers of (text, value); several formats and languages per category.
MAKERS: dict[str, tuple[Maker, ...]] = {
    "name": (
        lambda r: (
            (v := f"{r.choice(EVAL_FIRST)} {r.choice(EVAL_LAST)}"),
            f"Hi, I'm {v}, thanks for the help.",
        )[::-1],
        lambda r: (
            (v := f"{r.choice(EVAL_FIRST)} {r.choice(EVAL_LAST)}"),
            f"Please send the invoice to {v} at our office.",
        )[::-1],
        lambda r: (
            (v := f"{r.choice(EVAL_FIRST)} {r.choice(EVAL_LAST)}"),
            f"My colleague {v} asked the same question yesterday.",
        )[::-1],
    ),
    "address": (
        lambda r: (
            (v := f"{r.randint(1, 300)}{r.choice(['', 'B'])} {r.choice(STREETS)} Street"),
            f"I live at {v}, {r.choice(EVAL_CITIES)}.",
        )[::-1],
        lambda r: (
            (v := f"{r.choice(['Haupt', 'Linden', 'Garten'])}straße {r.randint(1, 99)}"),
            f"Meine Adresse ist {v} in Berlin.",
        )[::-1],
        lambda r: (
            (
                v := f"{r.choice('NSEW')}{r.randint(1, 20)} {r.randint(1, 9)}"
                f"{r.choice('ABDEFGHJLN')}{r.choice('PQRSTUWXYZ')}"
            ),
            f"The postcode is {v}, near the station.",
        )[::-1],
    ),
    "phone": (
        lambda r: ((v := f"030 {_digits(r, 7)}"), f"Tel. {v}")[::-1],  # DE
        lambda r: ((v := f"+44 20 {_digits(r, 4)} {_digits(r, 4)}"), f"Call me on {v} today.")[
            ::-1
        ],
        lambda r: (
            (v := f"({r.randint(200, 989)}) {_digits(r, 3)}-{_digits(r, 4)}"),
            f"You can reach me at {v} after five.",
        )[::-1],  # US
        lambda r: (
            (v := f"06 {_digits(r, 2)} {_digits(r, 2)} {_digits(r, 2)} {_digits(r, 2)}"),
            f"Mon numéro: téléphone {v}",
        )[::-1],  # FR
        lambda r: ((v := f"+49 171 {_digits(r, 7)}"), f"Handy: {v}")[::-1],
    ),
    "email": (
        lambda r: (
            (v := f"{r.choice(EVAL_FIRST).lower()}.{_digits(r, 3)}@example.com"),
            f"Write to {v} please.",
        )[::-1],
    ),
    "card": (lambda r: ((v := _luhn_card(r)), f"My card number is {v}.")[::-1],),
    "iban": (lambda r: ((v := _iban(r)), f"Refund to IBAN {v} please.")[::-1],),
    "date_of_birth": (
        lambda r: (
            (v := f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}/{r.randint(1950, 2005)}"),
            f"I was born on {v}.",
        )[::-1],
        lambda r: (
            (v := f"{r.randint(1, 28)} {r.choice(MONTHS)} {r.randint(1950, 2005)}"),
            f"Date of birth: {v}",
        )[::-1],
        lambda r: (
            (v := f"{r.randint(1, 28):02d}.{r.randint(1, 12):02d}.{r.randint(1950, 2005)}"),
            f"Geboren am {v} in Köln.",
        )[::-1],
    ),
    "passport": (
        lambda r: ((v := f"C{r.choice('FGHJK')}{_digits(r, 7)}"), f"My passport number is {v}.")[
            ::-1
        ],
        lambda r: ((v := _digits(r, 9)), f"Passport no. {v}, expires 2030.")[::-1],
    ),
    "tax_id": (
        lambda r: ((v := _tax_id(r)), f"Meine Steuer-ID ist {v}.")[::-1],
        lambda r: ((v := _tax_id(r)), f"Tax ID: {v}")[::-1],
    ),
    "national_id": (
        lambda r: (
            (v := f"{r.randint(100, 665)}-{r.randint(10, 99)}-{_digits(r, 4)}"),
            f"My SSN is {v}.",
        )[::-1],
    ),
}


def samples(seed: int = 21, per_category: int = 60) -> list[Sample]:
    """The labelled set: `per_category` texts for each category, seeded."""
    rng = random.Random(seed)
    out: list[Sample] = []
    for category, makers in MAKERS.items():
        for i in range(per_category):
            text, value = makers[i % len(makers)](rng)
            out.append(Sample(category, text, value))
    return out


def caught(sample: Sample, redacted: str) -> bool:
    """True when no piece (3+ letters or digits) of the planted value is left in the text."""
    pieces = [p for p in re.split(r"[^0-9A-Za-zÀ-ÿ]+", sample.value) if len(p) >= 3]
    return not any(piece in redacted for piece in pieces or [sample.value])


def recall(redact: Callable[[str], str], labelled: list[Sample]) -> dict[str, float]:
    """Share of samples caught, per category."""
    hits: dict[str, list[bool]] = {}
    for sample in labelled:
        hits.setdefault(sample.category, []).append(caught(sample, redact(sample.text)))
    return {category: sum(found) / len(found) for category, found in hits.items()}


NER_TEMPLATES = (
    "My name is {person} and I need help.",
    "{person} from {city} wrote to you last week.",
    "Hello, this is {person}.",
    "I am {person}, I moved to {city} in May.",
    "Can {person} change the order for me?",
    "Send it to {person} in {city}, please.",
    "We met {person} at the {city} office.",
    "Thanks {person}!",
    "The parcel for {person} is stuck in {city}.",
    "Dear {person}, your refund is on its way.",
    "Please tell {person} that the Pro plan renews on Monday.",
    "Where is the parcel {person} ordered on Friday?",
)
# Sentences without entities, capitalised words included: without them every capitalised
# token looks like a name to a model this small.
NEGATIVE = (
    "Where is my order? It was due on Tuesday.",
    "Please help me with the Pro plan.",
    "Thanks, that works.",
    "Is the iPhone app free?",
    "Why was my payment declined on Sunday?",
    "Could you check the Friday delivery?",
    "How do I reset my password?",
    "Quick question. Can I pay with PayPal?",
    "Hello! What are your support hours in December?",
    "Hi, the Android app crashes at login.",
    "Please cancel my Basic subscription.",
    "Can I upgrade to Business in March?",
    "Where is my parcel #20931? It was due on Monday.",
    "Order #57302 arrived damaged, can I get a replacement?",
)


def train_tiny_ner(directory: Path, seed: int = 5, examples: int = 400, epochs: int = 12) -> Path:
    """A spaCy pipeline with only an NER (PERSON, GPE), trained on synthetic sentences."""
    import spacy
    from spacy.training import Example

    rng = random.Random(seed)
    spacy.util.fix_random_seed(seed)
    nlp = spacy.blank("en")
    ner: Any = nlp.add_pipe("ner")
    for label in ("PERSON", "GPE"):
        ner.add_label(label)
    data: list[tuple[str, list[tuple[int, int, str]]]] = []
    for index in range(examples):
        template = rng.choice(NER_TEMPLATES if index % 2 else NEGATIVE)
        person = f"{rng.choice(TRAIN_FIRST)} {rng.choice(TRAIN_LAST)}"
        city = rng.choice(TRAIN_CITIES)
        text, spans = "", []
        for chunk in re.split(r"(\{person\}|\{city\})", template):
            value, label = {"{person}": (person, "PERSON"), "{city}": (city, "GPE")}.get(
                chunk, (chunk, "")
            )
            if label:
                spans.append((len(text), len(text) + len(value), label))
            text += value
        data.append((text, spans))
    train = [Example.from_dict(nlp.make_doc(t), {"entities": s}) for t, s in data]
    nlp.initialize(lambda: train)
    nlp.meta["name"] = "loopgate_tiny_ner"
    nlp.meta["version"] = "0.0.1"
    for _ in range(epochs):
        rng.shuffle(train)
        for start in range(0, len(train), 16):
            nlp.update(train[start : start + 16], drop=0.2, sgd=None)
    nlp.to_disk(directory)
    return directory
