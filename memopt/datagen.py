"""The embedded default dataset: small arithmetic word problems in the shape of MATH-500.

Columns `problem`, `solution`, `answer`, like `HuggingFaceH4/MATH-500`, so the
same code path (formatting, answer extraction, accuracy) serves both. Numbers are
small and solutions are short worked steps ending in `The answer is $\\boxed{N}$.`,
so a tiny model can learn the pattern within a short run. Generated offline and
deterministically from a seed; every problem appears once, so no test problem
is also a training problem.
"""
from __future__ import annotations

import random
from typing import Callable

from datasets import Dataset, DatasetDict, Features, Value

# Bump when a template changes: tokenized caches key on it (see data.dataset_identity).
GENERATOR_VERSION = 1

FEATURES = Features({"problem": Value("string"), "solution": Value("string"), "answer": Value("string")})

Example = tuple[str, str, int]  # problem, solution without the final sentence, answer


def _addition(rng: random.Random) -> Example:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"What is ${a} + {b}$?", f"${a} + {b} = {a + b}$.", a + b


def _subtraction(rng: random.Random) -> Example:
    a, b = sorted((rng.randint(0, 99), rng.randint(0, 99)), reverse=True)
    return f"What is ${a} - {b}$?", f"${a} - {b} = {a - b}$.", a - b


def _multiplication(rng: random.Random) -> Example:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"What is ${a} \\times {b}$?", f"${a} \\times {b} = {a * b}$.", a * b


def _linear_equation(rng: random.Random) -> Example:
    a, x, b = rng.randint(2, 9), rng.randint(0, 12), rng.randint(1, 20)
    c = a * x + b
    steps = f"Subtract {b} from both sides: ${a}x = {c - b}$. Divide both sides by {a}: $x = {x}$."
    return f"Solve for $x$: ${a}x + {b} = {c}$.", steps, x


def _remainder(rng: random.Random) -> Example:
    n, d = rng.randint(10, 99), rng.randint(2, 9)
    q, r = divmod(n, d)
    steps = f"${n} = {d} \\times {q} + {r}$, so the remainder is {r}."
    return f"What is the remainder when {n} is divided by {d}?", steps, r


def _percentage(rng: random.Random) -> Example:
    p = rng.choice((10, 20, 25, 50, 75))
    n = 20 * rng.randint(1, 20)  # a multiple of 20: every listed percentage of it is whole
    steps = f"${p}\\%$ of {n} is $\\frac{{{p}}}{{100}} \\times {n} = {p * n // 100}$."
    return f"What is ${p}\\%$ of {n}?", steps, p * n // 100


def _square(rng: random.Random) -> Example:
    a = rng.randint(2, 20)
    return f"What is ${a}^2$?", f"${a}^2 = {a} \\times {a} = {a * a}$.", a * a


TEMPLATES: tuple[Callable[[random.Random], Example], ...] = (
    _addition, _subtraction, _multiplication, _linear_equation, _remainder, _percentage, _square,
)


def generate_math_dataset(seed: int = 0, n_train: int = 4000, n_val: int = 200, n_test: int = 100) -> DatasetDict:
    """Unique problems from the templates in turn at random; the same seed gives the same dataset."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    while len(rows) < n_train + n_val + n_test:
        problem, steps, answer = rng.choice(TEMPLATES)(rng)
        if problem in seen:
            continue
        seen.add(problem)
        solution = f"{steps} The answer is $\\boxed{{{answer}}}$."
        rows.append({"problem": problem, "solution": solution, "answer": str(answer)})
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, len(rows))}
    everything = Dataset.from_dict({column: [row[column] for row in rows] for column in FEATURES}, features=FEATURES)
    return DatasetDict({split: everything.select(range(start, stop)) for split, (start, stop) in bounds.items()})
