//! UT-Zappos50K facts the generator reproduces (Yu & Grauman, CVPR 2014): the vocabularies of the
//! six attributes and the exact Category / SubCategory counts over all 50,025 images.
//!
//! The reference names 17 of the 19 Closure values; the two rare unnamed ones are stood in for by
//! "Adjustable" and "Drawstring". A real `meta-data.csv` brings its own names (the loader extends
//! the schema with any value it does not know).

/// Category names with their counts over the 50,025 images.
pub const CATEGORIES: &[(&str, u32)] =
    &[("Shoes", 30_169), ("Boots", 12_832), ("Sandals", 5_741), ("Slippers", 1_283)];

/// SubCategory names, the index of their Category in [`CATEGORIES`], and their counts.
pub const SUBCATEGORIES: &[(&str, usize, u32)] = &[
    ("Sneakers and Athletic Shoes", 0, 12_856),
    ("Heels", 0, 5_703),
    ("Flats", 0, 3_994),
    ("Loafers", 0, 2_875),
    ("Oxfords", 0, 2_044),
    ("Clogs and Mules", 0, 1_427),
    ("Boat Shoes", 0, 629),
    ("Firstwalker", 0, 369),
    ("Prewalker", 0, 249),
    ("Crib Shoes", 0, 23),
    ("Ankle", 1, 5_855),
    ("Mid-Calf", 1, 4_724),
    ("Knee High", 1, 2_202),
    ("Over the Knee", 1, 49),
    ("Prewalker Boots", 1, 2),
    ("Flat", 2, 5_601),
    ("Heel", 2, 126),
    ("Athletic", 2, 14),
    ("Slipper Flats", 3, 1_259),
    ("Boot", 3, 14),
    ("Slipper Heels", 3, 10),
];

/// Total images in the reference dataset.
pub const REFERENCE_ITEMS: u32 = 50_025;

/// Test-split size of the paper's split (40,020 train / 10,005 test).
pub const REFERENCE_TEST_ITEMS: u32 = 10_005;

pub const HEEL_HEIGHTS: &[&str] = &[
    "Flat",
    "Under 1in",
    "1in - 1 3/4in",
    "2in - 2 3/4in",
    "3in - 3 3/4in",
    "4in - 4 3/4in",
    "5in & over",
];

pub const CLOSURES: &[&str] = &[
    "Lace up",
    "Slip-On",
    "Pull-on",
    "Buckle",
    "Zipper",
    "Hook and Loop",
    "Ankle Strap",
    "Ankle Wrap",
    "Sling Back",
    "Elastic Gore",
    "Bungee",
    "Toggle",
    "Button Loop",
    "Monk Strap",
    "Snap",
    "Spat Strap",
    "Belt",
    "Adjustable",
    "Drawstring",
];

pub const GENDERS: &[&str] = &["Men", "Women", "Boys", "Girls"];

pub const TOE_STYLES: &[&str] = &[
    "Round Toe",
    "Closed Toe",
    "Almond",
    "Capped Toe",
    "Moc Toe",
    "Bump Toe",
    "Center Seam",
    "Pointed Toe",
    "Square Toe",
    "Wingtip",
    "Snub Toe",
    "Snip Toe",
    "Medallion",
    "Peep Toe",
    "Open Toe",
    "Bicycle Toe",
    "Algonquin",
    "Wide Toe Box",
    "Apron Toe",
];
