"""The thorough redaction pass of a build: Microsoft Presidio (analyzer + anonymizer) over
every output text, after the regex pass, when the `presidio` extra is installed.

Names and places need a spaCy NER pipeline. Loopgate ships none and downloads none: the
operator names one (`spacy_model`: an installed package or a directory). Without one,
Presidio still runs its pattern recognizers and ours below (phones with their national
formats, dates of birth, passport and tax ids next to their keyword, street addresses, UK
postcodes), and the manifest says the pass ran without NER. See docs/datasets.md.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from feedback.redact import Findings

Mode = Literal["off", "auto", "on"]
# Presidio entity -> (finding category, placeholder).
ENTITIES: dict[str, tuple[str, str]] = {
    "PERSON": ("person", "[PERSON]"),
    "LOCATION": ("location", "[LOCATION]"),
    "STREET_ADDRESS": ("address", "[ADDRESS]"),
    "UK_POSTCODE": ("address", "[ADDRESS]"),
    "PHONE_NUMBER": ("phone", "[PHONE]"),
    "DATE_OF_BIRTH": ("date_of_birth", "[DATE_OF_BIRTH]"),
    "PASSPORT": ("passport", "[PASSPORT]"),
    "TAX_ID": ("national_id", "[NATIONAL_ID]"),
    "US_SSN": ("national_id", "[NATIONAL_ID]"),
    "UK_NHS": ("national_id", "[NATIONAL_ID]"),
    "CREDIT_CARD": ("card", "[CARD]"),
    "IBAN_CODE": ("iban", "[IBAN]"),
    "EMAIL_ADDRESS": ("email", "[EMAIL]"),
}
# Presidio's email and URL recognizers fetch the public suffix list from the network on
# first use; the regex pass has already replaced emails, so they are left out.
SKIPPED_RECOGNIZERS = frozenset({"EmailRecognizer", "UrlRecognizer"})
_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?|januar|februar|m[äa]rz|"
    r"mai|juni|juli|oktober|dezember)"
)
_DATE = (
    r"(?:\d{1,2}[./-]\d{1,2}[./-](?:19|20)\d{2}|(?:19|20)\d{2}-\d{2}-\d{2}|"
    rf"\d{{1,2}}(?:st|nd|rd|th)?\.? {_MONTHS}\.?,? (?:19|20)\d{{2}}|"
    rf"{_MONTHS}\.? \d{{1,2}}(?:st|nd|rd|th)?,? (?:19|20)\d{{2}})"
)
# Between a keyword and its value: "is", ":" and the like.
_IS = r"[\s:.,#-]*(?:(?:is|ist|est|es|no\.?|nr\.?)[\s:.,#-]+)?"
# (entity, pattern): the named group `v` is what gets replaced, the rest is its context.
CONTEXT_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "DATE_OF_BIRTH",
        r"(?i)\b(?:born(?: on)?|date of birth|birth ?date|birthday|d\.?o\.?b\.?|geboren(?: am)?"
        rf"|geburtsdatum|n[ée]e? le)\b[\s:,-]*(?P<v>{_DATE})",
    ),
    (
        "PASSPORT",
        r"(?i)\b(?:passport|reisepass|passeport|pasaporte)(?:[ -]?(?:no\.?|number|nr\.?|nummer|#))?"
        rf"{_IS}(?P<v>(?=[A-Z0-9]*\d)[A-Z0-9]{{6,9}})\b",
    ),
    (
        "TAX_ID",
        r"(?i)\b(?:steuer-?id(?:entifikationsnummer)?|steuer-?idnr\.?|idnr\.?|tax ?id|tin"
        r"|steuernummer|st\.?-?nr\.?)"
        rf"{_IS}(?P<v>\d{{2}}[ /]?\d{{3}}[ /]?\d{{3}}[ /]?\d{{3}}|\d{{11}})\b",
    ),
    (
        "PHONE_NUMBER",
        r"(?i)\b(?:tel|phone|telefon|mobile|mobil|cell|handy|fax|call me(?: at| on)?)\b\.?[\s:]*"
        r"(?P<v>\+?\(?\d[\d\s()/.-]{5,}\d)",
    ),
    (
        "STREET_ADDRESS",
        r"(?P<v>\b\d{1,5}[A-Za-z]?,? (?:[A-Z][a-z]+ ){1,3}"
        r"(?:Street|St\.?|Road|Rd\.?|Avenue|Ave\.?|Lane|Drive|Boulevard|Way|Place|Square|Court)\b"
        r"|\b[A-ZÄÖÜ][a-zäöüß]+(?:stra(?:ß|ss)e|weg|platz|allee|gasse) \d{1,4}[a-z]?\b"
        r"|\b\d{1,4},? (?:rue|avenue|boulevard|place) (?:de |du |des |la )?[A-Z][\w-]+)",
    ),
    ("UK_POSTCODE", r"(?P<v>\b[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}\b)"),
)


class ThoroughConfig(BaseModel):
    """The Presidio pass: whether it runs, which spaCy pipeline finds names, the threshold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # off: regex only; auto: Presidio when installed; on: fail when it is not.
    mode: Mode = "auto"
    # An installed spaCy package or a pipeline directory; None runs without NER.
    spacy_model: str | None = None
    score_threshold: float = Field(0.4, ge=0, le=1)
    entities: frozenset[str] = frozenset(ENTITIES)


class ThoroughUnavailable(Exception):
    """Presidio or the named spaCy pipeline cannot be loaded."""


def _module(name: str) -> Any:
    # Imported by name: the extra is optional, and its types stay out of our mypy run.
    return importlib.import_module(name)


def _context_recognizer(entity: str, pattern: str) -> Any:
    analyzer = _module("presidio_analyzer")
    base: type[Any] = analyzer.EntityRecognizer
    found: Any = analyzer.RecognizerResult
    compiled = re.compile(pattern)

    class ContextRecognizer(base):  # type: ignore[misc]  # a runtime base
        """A regex whose keyword is context: only its `v` group is reported."""

        def load(self) -> None:
            return None

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            return [found(entity, m.start("v"), m.end("v"), 0.85) for m in compiled.finditer(text)]

    return ContextRecognizer(supported_entities=[entity], name=f"Loopgate{entity.title()}")


class Thorough:
    """Presidio's analyzer and anonymizer with Loopgate's recognizers; built once per build."""

    def __init__(self, config: ThoroughConfig) -> None:
        try:
            spacy = _module("spacy")
            analyzer = _module("presidio_analyzer")
            nlp_engine = _module("presidio_analyzer.nlp_engine")
            anonymizer = _module("presidio_anonymizer")
            self._operator: Any = _module("presidio_anonymizer.entities").OperatorConfig
        except ImportError as exc:
            raise ThoroughUnavailable(
                "Presidio is not installed (pip install 'loopgate[presidio]')"
            ) from exc
        self.config = config
        if config.spacy_model is None:
            nlp = spacy.blank("en")
            self.label = "presidio (patterns only: no spaCy NER pipeline named)"
        else:
            try:
                nlp = spacy.load(config.spacy_model)
            except (OSError, ValueError) as exc:
                raise ThoroughUnavailable(
                    f"cannot load the spaCy pipeline {config.spacy_model!r}: {exc}"
                ) from exc
            meta = nlp.meta
            self.label = (
                f"presidio + spaCy {meta.get('name', '?')} {meta.get('version', '?')}"
                f" ({config.spacy_model})"
            )
        # The engine is given the pipeline itself: with a name, Presidio would try to
        # download a model it does not find.
        engine = nlp_engine.SpacyNlpEngine(models=[{"lang_code": "en", "model_name": "loopgate"}])
        engine.nlp = {"en": nlp}
        registry = analyzer.RecognizerRegistry(supported_languages=["en"])
        registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
        for name in SKIPPED_RECOGNIZERS:
            registry.remove_recognizer(name)
        for entity, pattern in CONTEXT_PATTERNS:
            registry.add_recognizer(_context_recognizer(entity, pattern))
        self.analyzer: Any = analyzer.AnalyzerEngine(
            nlp_engine=engine, registry=registry, supported_languages=["en"]
        )
        self.anonymizer: Any = anonymizer.AnonymizerEngine()
        supported = set(self.analyzer.get_supported_entities(language="en"))
        self.entities = sorted(config.entities & set(ENTITIES) & supported)

    def redact(self, text: str, findings: Findings) -> str:
        """Text with every entity found replaced by its placeholder; findings counted."""
        if not text.strip():
            return text
        results = self.analyzer.analyze(
            text,
            language="en",
            entities=self.entities,
            score_threshold=self.config.score_threshold,
        )
        if not results:
            return text
        for result in results:
            category = ENTITIES[result.entity_type][0]
            findings[category] = findings.get(category, 0) + 1
        operators = {
            entity: self._operator("replace", {"new_value": placeholder})
            for entity, (_, placeholder) in ENTITIES.items()
        }
        done = self.anonymizer.anonymize(text=text, analyzer_results=results, operators=operators)
        return str(done.text)

    def redact_value(self, value: Any, findings: Findings) -> Any:
        """Every content string of a JSON-like value (in messages, `content` only)."""
        if isinstance(value, str):
            return self.redact(value, findings)
        if isinstance(value, list):
            return [self.redact_value(item, findings) for item in value]
        if isinstance(value, dict):
            # In a message only `content` is text; `role` and the like are structure.
            return {
                key: item
                if isinstance(item, str) and key != "content"
                else self.redact_value(item, findings)
                for key, item in value.items()
            }
        return value


@functools.cache
def _loaded(config: ThoroughConfig) -> Thorough | str:
    # Loading takes seconds (recognizers, the spaCy pipeline) and the engines are read-only
    # afterwards: one per configuration per process, however many builds run in it.
    try:
        return Thorough(config)
    except ThoroughUnavailable as exc:
        return str(exc)


def load(config: ThoroughConfig) -> tuple[Thorough | None, str | None]:
    """The pass to run (None when off, or when auto and it cannot load) and why not."""
    if config.mode == "off":
        return None, None
    loaded = _loaded(config)
    if isinstance(loaded, Thorough):
        return loaded, None
    if config.mode == "on":
        raise ThoroughUnavailable(loaded)
    return None, loaded


def names(passes: Sequence[object]) -> list[str]:
    """Labels of the passes that ran, for the manifest."""
    return ["regex", *(str(getattr(p, "label", p)) for p in passes)]
