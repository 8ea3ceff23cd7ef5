"""A small built-in English text that the tiny checkpoints' tokenizer is trained on.

Why built in: the generator must work offline and give the same tokenizer on every machine,
so the training text ships with the code. It was written for Mainsail; it is plain prose about
boats and weather with some numbers, code-like words and punctuation so common merges exist.
"""

from __future__ import annotations

CORPUS: tuple[str, ...] = (
    "The harbour was quiet in the early morning, and the small boats rocked on the grey water.",
    "A sailor checked the ropes, the sails and the weather before she left the dock at dawn.",
    "The wind came from the west at twelve knots, then turned north and grew stronger by noon.",
    "When the sea is calm, the crew can rest; when the storm arrives, everyone works together.",
    "The captain wrote in the log: position, speed, heading, and the time of every change.",
    "Light rain fell over the island while the ferry crossed the channel to the old town.",
    "Children ran along the beach, picking up shells and stones and throwing them into waves.",
    "The lighthouse keeper climbed two hundred steps each night to light the great lamp.",
    "Fishing boats returned in the evening with their nets full of silver fish and crabs.",
    "A good map shows the depth of the water, the rocks below, and the safe way into port.",
    "The engine started with a loud noise, and the boat moved slowly out of the marina.",
    "We counted the stars: one, two, three, four, five, six, seven, eight, nine and ten.",
    "Questions help us learn. What is the weather today? Where are we going? Who is on deck?",
    "The answer is simple: keep the bow into the wind, reduce the sail, and hold your course.",
    "Mainsail serves language models on many workers, and the router sends each request well.",
    "A request arrives, the prompt is split into tokens, and the model writes one token at a time.",
    "Every block of tokens has a hash, so a worker that has seen a prefix can reuse its cache.",
    "The scheduler mixes new prompts and running sequences in one batch to keep the machine busy.",
    "If memory runs out, a sequence is paused, its blocks are freed, and it is computed again.",
    "def step(batch): return model(batch.tokens, batch.positions, batch.cache)",
    "for i in range(10): print(i, i * i, i + 1)",
    "The numbers 2024, 1999, 3.14, 42 and 100 appear in the text so digits are not strange.",
    "Hello! How are you today? I am fine, thank you. The weather is lovely and the sea is blue.",
    "The old ship had three masts, white sails, and a wooden deck that creaked in the swell.",
    "At night the crew kept watch in turns, two hours each, looking for lights on the horizon.",
    "Clouds gathered over the hills, the air grew cold, and the first thunder rolled over us.",
    "The navigator used a compass, a clock and the sun to find the position of the ship.",
    "Markets by the harbour sold bread, cheese, fruit, coffee, rope, paint and warm jackets.",
    "Tomorrow we will sail to the northern islands, if the forecast stays fair and dry.",
    "She smiled and said that the best part of the journey was the quiet hour before sunrise.",
    "Users, assistants and systems take turns in a conversation, and each turn ends clearly.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps near the warm stove.",
)
