"""Simulated answers: a token approximation and a writer with a recognisable voice per style."""

from __future__ import annotations

import hashlib
import random
import re

# A token is a word or one punctuation mark, with the whitespace before it: streaming the
# pieces in order rebuilds the text exactly, and counting them is the usage figure.
_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
_END = frozenset({".", "!", "?"})

_STOPWORDS = frozenset(
    """
    about above after again against all also and any are aren't because been before being
    below between both but can can't cannot could did didn't does doesn't doing don't down
    during each few for from further had has have having her here hers herself him himself
    his how i'd i'll i'm i've into isn't it's its itself just let's like make more most much
    must my myself need nor not now off once only other ought our ours out over own please
    same she should so some such tell than that that's the their theirs them themselves then
    there these they this those through too under until very was wasn't way we were what
    when where which while who whom why will with won't would you you'd you'll you're your
    yours yourself explain give know want help thanks thank hello could question answer
    really something anything everything thing things get got use using used one two way
    configure set setup write create build find work works start choose best good better
    best show describe tips ways able
    """.split()  # noqa: SIM905 - a word list reads better as prose than as 170 literals
)

_STYLE_WORDS: dict[str, tuple[str, str]] = {
    # Fallback topics when the prompt offers fewer than two words worth repeating.
    "concise": ("the request", "the details"),
    "friendly": ("this", "the fun part"),
    "formal": ("your enquiry", "the relevant considerations"),
    "verbose": ("the question you raised", "the surrounding context"),
}

_OPENERS: dict[str, tuple[str, ...]] = {
    "concise": ("Short answer:", "In brief:", "Answer:"),
    "friendly": ("Great question!", "Happy to help!", "Oh, I love this one!", "Hi there!"),
    "formal": ("Certainly.", "Certainly. Allow me to explain.", "Thank you for your question."),
    "verbose": (
        "That is a wonderful question, and it deserves a thorough answer, so let me take it "
        "step by step.",
        "There is quite a lot to say here, so I will walk through it carefully and in some detail.",
    ),
}

_SENTENCES: dict[str, tuple[str, ...]] = {
    "concise": (
        "{A} depends mostly on {b}.",
        "Check {a} first, then {b}.",
        "Keep {a} simple.",
        "{A} works best with a clear {b}.",
        "Measure {a} before changing {b}.",
        "Fix {a}; {b} follows.",
        "Start small with {a}.",
        "Prefer defaults for {b}.",
    ),
    "friendly": (
        "Honestly, {a} is so much fun once {b} clicks!",
        "You'll find that {a} gets way easier with a bit of practice!",
        "A little tip: try pairing {a} with {b}, it works wonders!",
        "Don't worry if {a} feels tricky at first, everyone starts there!",
        "I'd start with {a} and see how {b} feels after that!",
        "You're already on the right track by asking about {a}!",
        "Think of {b} as a friendly helper for {a}!",
    ),
    "formal": (
        "With regard to {a}, it is advisable to consider {b} with care.",
        "It should be noted that {a} is generally governed by {b}.",
        "One would be well advised to review {a} before proceeding.",
        "In accordance with established practice, {a} ought to precede {b}.",
        "Furthermore, {b} merits careful consideration in this respect.",
        "It is, accordingly, prudent to document {a} thoroughly.",
        "The relationship between {a} and {b} should be assessed methodically.",
    ),
    "verbose": (
        "To begin with, it helps to understand what {a} actually involves in practice, "
        "because the rest of the picture builds on that foundation.",
        "Furthermore, {b} plays a surprisingly large role here, and it is worth spending a "
        "little extra time on it before moving on.",
        "It is also worth mentioning that {a} rarely exists in isolation; it interacts with "
        "{b} in ways that are easy to overlook at first glance.",
        "On top of that, many people find that revisiting {a} after a while reveals details "
        "they missed the first time around.",
        "In other words, the more carefully you think about {b}, the more sense {a} will make "
        "as a whole.",
        "Another angle to consider is how {a} changes over time, since what works today may "
        "need adjusting as {b} evolves.",
    ),
}

_FILLERS: dict[str, tuple[str, ...]] = {
    # Short sentences of one to six tokens that top an answer up to its length.
    "concise": ("Yes.", "Test it.", "Keep it lean.", "Verify the result.", "Then ship it today."),
    "friendly": ("Yay!", "So fun!", "Give it a go!", "You'll love it!", "It's really that easy!"),
    "formal": ("Indeed.", "Naturally.", "This is advisable.", "Prudence is warranted."),
    "verbose": (
        "Truly.",
        "Naturally, of course.",
        "That matters a great deal.",
        "This is well worth remembering.",
    ),
}

_CLOSERS: dict[str, tuple[str, ...]] = {
    "concise": ("Done.", "That's it."),
    "friendly": ("Hope that helps!", "Have fun with it!", "You've got this!"),
    "formal": ("I trust this addresses your enquiry.", "Kind regards."),
    "verbose": (
        "In summary, taking the time to understand each of these aspects will pay off "
        "considerably in the long run.",
    ),
}


def split_tokens(text: str) -> list[str]:
    """Text as its simulated tokens, each with the whitespace before it."""
    return _PIECE.findall(text)


def count_tokens(text: str) -> int:
    """How many simulated tokens a text is: words and punctuation marks."""
    return sum(1 for _ in _PIECE.finditer(text))


def topic_words(text: str, limit: int = 4) -> list[str]:
    """The few most telling distinct content words of a prompt, lowercase."""
    seen: list[str] = []
    for match in _WORD.finditer(text):
        word = match.group(0).lower().strip("'-")
        if len(word) >= 3 and word not in _STOPWORDS and word not in seen:
            seen.append(word)
    # Longer words are more often the subject ("vacuum" over "tune"); ties keep prompt order.
    return sorted(seen, key=len, reverse=True)[:limit]


def answer_rng(*parts: object) -> random.Random:
    """A generator seeded by the given values, the same in every process."""
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def compose(style: str, prompt: str, rng: random.Random, tokens: int) -> list[str]:
    """An answer of exactly `tokens` tokens in `style` about the prompt's topic words."""
    words = topic_words(prompt)
    fallback = _STYLE_WORDS[style]
    while len(words) < 2:
        words.append(fallback[len(words)])
    parts = [rng.choice(_OPENERS[style])]
    closer = rng.choice(_CLOSERS[style])
    left = tokens - count_tokens(parts[0]) - count_tokens(closer)
    if left < 0:
        # A short answer keeps the style's shortest opener and closer.
        parts = [min(_OPENERS[style], key=count_tokens)]
        closer = min(_CLOSERS[style], key=count_tokens)
        left = tokens - count_tokens(parts[0]) - count_tokens(closer)
    last = ""
    # Whole sentences while they fit, then short fillers, so the answer ends cleanly.
    for pool in (_SENTENCES[style], _FILLERS[style]):
        while left > 0:
            candidates = list(pool)
            rng.shuffle(candidates)
            for template in candidates:
                if template == last:
                    continue
                a, b = rng.sample(words, 2)
                sentence = template.format(a=a, b=b, A=a[:1].upper() + a[1:])
                size = count_tokens(sentence)
                if size <= left:
                    parts.append(sentence)
                    left -= size
                    last = template
                    break
            else:
                break
    parts.append(closer)
    pieces = split_tokens(" ".join(parts))
    if len(pieces) <= tokens:
        return pieces
    # Too short a budget for opener and closer: cut, ending on a full stop where it can.
    pieces = pieces[:tokens]
    if tokens > 1 and pieces[-1].strip() not in _END and pieces[-2].strip() not in _END:
        pieces[-1] = "."
    return pieces
