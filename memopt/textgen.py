"""The embedded general-text corpus: what the fine-tune regime's base model is pretrained on.

Short English documents (stories, weather reports, timetables, shop notes, price lists, match
reports, settings files, readers' questions, animal facts, letters, dialogues) built from templates
and word lists, one `text` column. It is deliberately not the math task: no worked problems, no LaTeX,
no arithmetic, no boxed answers. Like real web text it has the task's characters and common words
($, %, =, -, braces, backslashes; "what is", "answer", "problem", "solution") in other uses, and
numbers as counts, dates, times and prices. A model pretrained on it knows English-like text and the
characters, not the task, so fine-tuning on the math data has something to adapt. Generated offline,
deterministically from a seed.
"""
from __future__ import annotations

import random
from typing import Callable

from datasets import Dataset, DatasetDict, Features, Value

# Bump when a template or word list changes: tokenized caches and base models key on it.
TEXTGEN_VERSION = 1

FEATURES = Features({"text": Value("string")})

NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack", "Lena", "Marco",
         "Nora", "Oscar", "Paula", "Quinn", "Rosa", "Sam", "Tara", "Victor")
TOWNS = ("Ashford", "Brookfield", "Cedar Hill", "Dunmore", "Elmwood", "Fairview", "Glenrock", "Harbor Bay",
         "Ivy Lane", "Kingsbridge", "Lakeside", "Millbrook")
PLACES = ("market", "library", "station", "park", "bakery", "river", "school", "museum", "harbor", "garden")
ITEMS = ("apples", "pears", "books", "candles", "loaves of bread", "jars of honey", "baskets", "lamps",
         "bottles of milk", "bags of rice", "pencils", "blankets")
ANIMALS = (("fox", "forests", "mice and berries"), ("heron", "marshes", "fish and frogs"),
           ("goat", "mountains", "grass and leaves"), ("otter", "rivers", "fish and crabs"),
           ("owl", "old barns", "mice and insects"), ("deer", "meadows", "grass and bark"),
           ("seal", "cold coasts", "fish and squid"), ("badger", "woodland", "worms and roots"))
WEATHER = ("sunny", "cloudy", "windy", "rainy", "foggy", "cold", "warm", "stormy")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
FEELINGS = ("happy", "tired", "curious", "surprised", "calm", "proud", "worried", "glad")


def _person(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    return name, rng.choice(("he", "she")) if name not in ("Quinn", "Sam") else "they"


def _story(rng: random.Random) -> str:
    name, they = _person(rng)
    friend = rng.choice([n for n in NAMES if n != name])
    place, items = rng.choice(PLACES), rng.choice(ITEMS)
    return (f"{name} lived in {rng.choice(TOWNS)}. Every {rng.choice(DAYS)} {they} walked to the {place} "
            f"with {friend}. One morning they found {rng.randint(2, 30)} {items} by the door. "
            f"{name} felt {rng.choice(FEELINGS)}, and {friend} laughed. They carried the {items} home before noon.")


def _weather(rng: random.Random) -> str:
    town, day, month = rng.choice(TOWNS), rng.choice(DAYS), rng.choice(MONTHS)
    low = rng.randint(-5, 18)
    return (f"Weather for {town} on {day}, {month} {rng.randint(1, 28)}. The morning will be {rng.choice(WEATHER)} "
            f"and the afternoon {rng.choice(WEATHER)}. Temperatures from {low} to {low + rng.randint(3, 12)} degrees, "
            f"with winds of {rng.randint(5, 60)} kilometres an hour.")


def _timetable(rng: random.Random) -> str:
    a, b = rng.sample(TOWNS, 2)
    hour, minute = rng.randint(5, 20), rng.choice((0, 10, 15, 20, 30, 40, 45, 50))
    ride = rng.randint(20, 150)
    arrive = hour * 60 + minute + ride
    return (f"The train from {a} to {b} leaves platform {rng.randint(1, 9)} at {hour:02d}:{minute:02d} and arrives "
            f"at {arrive // 60 % 24:02d}:{arrive % 60:02d}. The journey takes {ride} minutes. "
            f"A ticket costs {rng.randint(3, 40)} pounds, and children travel for half the price.")


def _shop(rng: random.Random) -> str:
    first, second, third = rng.sample(ITEMS, 3)
    return (f"Notes from the {rng.choice(('corner shop', 'farm shop', 'village store', 'market stall'))} in "
            f"{rng.choice(TOWNS)}: we have {rng.randint(2, 90)} {first}, {rng.randint(2, 90)} {second} and "
            f"{rng.randint(2, 90)} {third} on the shelves. Deliveries come on {rng.choice(DAYS)}. "
            f"The shop opens at {rng.randint(6, 10)} in the morning and closes at {rng.randint(4, 9)} in the evening.")


def _animal(rng: random.Random) -> str:
    animal, home, food = rng.choice(ANIMALS)
    return (f"The {animal} lives in {home} and eats {food}. An adult {animal} weighs about {rng.randint(1, 90)} "
            f"kilograms and can live for {rng.randint(3, 25)} years. In {rng.choice(MONTHS)} the young leave "
            f"their parents, and by {rng.choice(MONTHS)} they find a home of their own.")


def _letter(rng: random.Random) -> str:
    name, _ = _person(rng)
    writer = rng.choice([n for n in NAMES if n != name])
    return (f"Dear {name}, thank you for your letter of {rng.choice(MONTHS)} {rng.randint(1, 28)}. The {rng.choice(PLACES)} "
            f"here is {rng.choice(('quiet', 'busy', 'lovely', 'crowded'))} this time of year, and the weather has been "
            f"{rng.choice(WEATHER)}. I will visit you in {rng.choice(TOWNS)} on {rng.choice(DAYS)}. Best wishes, {writer}.")


def _dialogue(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    place = rng.choice(PLACES)
    return (f'"Where are you going?" asked {a}. "To the {place}," said {b}. "It opens at {rng.randint(7, 11)}." '
            f'"May I come too?" "Of course. Bring {rng.randint(2, 6)} {rng.choice(ITEMS)}, and we will be back by '
            f'{rng.randint(1, 6)} o\'clock."')


def _prices(rng: random.Random) -> str:
    first, second = rng.sample(ITEMS, 2)
    return (f"Price list at the {rng.choice(PLACES)} in {rng.choice(TOWNS)}: tea ${rng.randint(1, 4)}.{rng.choice(('00', '50', '95'))}, "
            f"{first} ${rng.randint(2, 30)} each, {second} ${rng.randint(2, 30)} a dozen. This week {first} are "
            f"{rng.choice((10, 20, 25, 50))}% off, and members save another {rng.choice((5, 10))}%.")


def _match(rng: random.Random) -> str:
    home, away = rng.sample(TOWNS, 2)
    scorer, keeper = rng.sample(NAMES, 2)
    return (f"Final score: {home} {rng.randint(0, 5)} - {rng.randint(0, 5)} {away}. {scorer} scored in the "
            f"{rng.randint(2, 89)}th minute, and {keeper} saved a penalty. A crowd of {rng.randint(200, 9000)} watched "
            f"on a {rng.choice(WEATHER)} {rng.choice(DAYS)}; the teams meet again in {rng.choice(MONTHS)}.")


def _settings(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    return (f"Settings for the printer in the {rng.choice(PLACES)} office: colour = {rng.choice(('on', 'off'))}; "
            f"copies = {rng.randint(1, 9)}; paper = A{rng.randint(3, 5)}. To print a letter for {name}, type "
            f"{{name}} where the name should go and \\n for a new line, then save it as C:\\letters\\{name.lower()}.txt.")


def _question(rng: random.Random) -> str:
    asker, _ = _person(rng)
    thing = rng.choice(("garden gate", "kitchen tap", "bicycle chain", "old clock", "front door", "radio"))
    return (f"A question from {asker} in {rng.choice(TOWNS)}: what is the best way to fix a {thing} that "
            f"{rng.choice(('squeaks', 'sticks', 'will not close', 'keeps stopping'))}? Our answer: the problem is "
            f"usually dirt, and the solution is a little oil and {rng.randint(5, 30)} minutes of patience.")


TEMPLATES: tuple[Callable[[random.Random], str], ...] = (
    _story, _weather, _timetable, _shop, _animal, _letter, _dialogue, _prices, _match, _settings, _question,
)


def generate_general_corpus(seed: int = 0, n_train: int = 6000, n_val: int = 300) -> DatasetDict:
    """Documents of one to three template paragraphs; the same seed gives the same corpus."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(TEMPLATES)(rng) for _ in range(rng.randint(1, 3))) for _ in range(n_train + n_val)]
    split = lambda rows: Dataset.from_dict({"text": rows}, features=FEATURES)  # noqa: E731
    return DatasetDict({"train": split(texts[:n_train]), "validation": split(texts[n_train:])})
