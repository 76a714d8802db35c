"""The catalog vocabulary shared by the sample generator and the tiny offline tokenizer.

Kept in one place so that the tiny tokenizer covers every word the sample catalog can produce (one token per
word, which keeps the demo's sequences short) and so that the generator's categories mirror the real Burberry
catalog's `category1/2/3_code` structure.
"""

from __future__ import annotations

GENDERS: tuple[str, ...] = ("WOMAN", "MAN", "KIDS")

# category3_code -> (category2_code, silhouette drawn by the generator, log-price mean in USD)
CATEGORIES: dict[str, tuple[str, str, float]] = {
    "TRENCH COATS": ("OUTERWEAR", "coat", 7.8),
    "QUILTED JACKETS": ("OUTERWEAR", "jacket", 7.2),
    "SHIRTS": ("CLOTHING", "shirt", 6.5),
    "KNITWEAR": ("CLOTHING", "sweater", 6.8),
    "DRESSES": ("CLOTHING", "dress", 7.3),
    "SHOULDER BAGS": ("BAGS", "bag", 7.6),
    "TOTE BAGS": ("BAGS", "tote", 7.4),
    "SCARVES": ("ACCESSORIES", "scarf", 6.2),
    "CAPS & HATS": ("ACCESSORIES", "cap", 5.9),
    "WALLETS & CARD CASES": ("SMALL LEATHER GOODS", "wallet", 6.0),
    "SNEAKERS": ("SHOES", "shoe", 6.6),
    "BOOTS": ("SHOES", "boot", 7.0),
    "N.A.": ("N.A.", "box", 6.0),
}

COLOURS: dict[str, tuple[int, int, int]] = {
    "Black": (20, 20, 22),
    "Honey": (196, 150, 80),
    "Archive Beige": (214, 196, 160),
    "Navy": (28, 40, 90),
    "Burgundy": (110, 24, 40),
    "Olive": (96, 104, 50),
    "Stone": (170, 165, 150),
    "White": (236, 236, 232),
    "Red": (190, 30, 36),
    "Pale Blue": (150, 185, 215),
}

# material -> price premium (multiplier); patterns likewise
MATERIALS: dict[str, float] = {
    "Cotton": 1.0,
    "Wool": 1.3,
    "Cashmere": 2.2,
    "Leather": 1.9,
    "Nylon": 0.9,
    "Silk": 1.6,
}
PATTERNS: dict[str, float] = {"Plain": 1.0, "Check": 1.45, "Monogram": 1.6, "Striped": 1.1}

STYLE_WORDS: tuple[str, ...] = (
    "Classic",
    "Heritage",
    "Oversized",
    "Slim",
    "Cropped",
    "Long",
    "Short",
    "Mini",
    "Medium",
    "Large",
    "Vintage",
    "Reversible",
    "Quilted",
    "Knitted",
    "Logo",
    "Embroidered",
    "Belted",
    "Hooded",
    "Kensington",
    "Chelsea",
    "Westminster",
    "Lola",
    "Pocket",
    "Rocking",
    "Horse",
    "Equestrian",
    "Knight",
    "Trench",
    "Coat",
    "Jacket",
    "Shirt",
    "Sweater",
    "Dress",
    "Bag",
    "Tote",
    "Scarf",
    "Cap",
    "Wallet",
    "Sneakers",
    "Boots",
    "Cardholder",
    "Card",
    "Case",
    "Bucket",
    "Hat",
    "Baseball",
    "Crossbody",
    "Shoulder",
    "Print",
    "with",
    "and",
    "in",
    "the",
    "Detail",
)


def corpus_lines() -> list[str]:
    """Every word and field label the sample catalog and the answer format can contain, one phrase per line."""
    lines = ["Product: Category: Full Price: What is shown in this image?"]
    lines += list(GENDERS) + list(CATEGORIES) + [c2 for c2, _, _ in CATEGORIES.values()]
    lines += list(COLOURS) + list(MATERIALS) + list(PATTERNS) + list(STYLE_WORDS)
    lines += [str(d) for d in range(10)] + [f"{n}.0" for n in range(10)]
    return lines
