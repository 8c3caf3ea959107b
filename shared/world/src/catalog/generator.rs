//! A synthetic catalog with UT-Zappos50K's schema and marginals, for when the real file is absent.
//!
//! Category and SubCategory follow the exact reference counts (scaled by largest remainder when the
//! size differs from 50,025). The other four attributes are drawn from conditionals on the
//! subcategory that mimic the reference: heel height depends on the kind of shoe (heels are high,
//! sneakers low, about 45% of cells empty overall), gender leans by subcategory (heels are women's,
//! baby shoes are "Boys;Girls"), closures are often two-valued ("Lace up;Zipper"), and a toe style
//! cell is usually a shape plus an openness ("Round Toe;Closed Toe") plus sometimes a decoration.

use super::reference::{SUBCATEGORIES, REFERENCE_ITEMS};
use super::schema::{Attribute, ItemAttrs, Schema};
use super::{Catalog, Item, Split};
use crate::rng::{self, weighted_index, Rng};
use rand::seq::SliceRandom;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// How to generate a catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GeneratorConfig {
    /// Number of items (the reference has 50,025).
    pub items: usize,
    /// Seed for attributes and for the train/test split.
    pub seed: u64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig { items: REFERENCE_ITEMS as usize, seed: 2022 }
    }
}

/// Generates a catalog with the reference schema.
pub fn generate(cfg: &GeneratorConfig) -> Catalog {
    let schema = Schema::reference();
    let counts = scaled_counts(cfg.items);
    let mut subcats: Vec<usize> = Vec::with_capacity(cfg.items);
    for (s, c) in counts.iter().enumerate() {
        subcats.extend(std::iter::repeat_n(s, *c));
    }
    let mut r = rng::rng(rng::derive(cfg.seed, rng::stream::CATALOG));
    subcats.shuffle(&mut r);
    let items = subcats
        .iter()
        .enumerate()
        .map(|(i, &s)| Item {
            cid: format!("{}-{}", 7_000_000 + i, r.random_range(1..100_000u32)),
            attrs: draw_attrs(&schema, s, &mut r),
        })
        .collect();
    let split = Split::by_seed(cfg.items, cfg.seed);
    Catalog { schema, items, split }
}

/// Subcategory counts for `n` items: the reference counts scaled by largest remainder.
pub fn scaled_counts(n: usize) -> Vec<usize> {
    let total = REFERENCE_ITEMS as f64;
    let exact: Vec<f64> = SUBCATEGORIES.iter().map(|(_, _, c)| *c as f64 * n as f64 / total).collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut left = n - counts.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..exact.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    for i in order {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

fn draw_attrs(schema: &Schema, subcat: usize, r: &mut Rng) -> ItemAttrs {
    let (name, category, _) = SUBCATEGORIES[subcat];
    let p = profile(name);
    let mut attrs = ItemAttrs::default();
    attrs.insert(Attribute::Category, category as u8);
    attrs.insert(Attribute::SubCategory, subcat as u8);
    // Heel height: slot 0 of the weights is "empty".
    if let Some(h) = weighted_index(p.heel, r) {
        if h > 0 {
            attrs.insert(Attribute::HeelHeight, (h - 1) as u8);
        }
    }
    // Gender cells, two of them multi-valued.
    const CELLS: [&[u8]; 6] = [&[0], &[1], &[2], &[3], &[0, 1], &[2, 3]];
    if let Some(g) = weighted_index(p.gender, r) {
        for v in CELLS[g] {
            attrs.insert(Attribute::Gender, *v);
        }
    }
    if r.random::<f64>() >= p.closure_empty {
        draw_named(schema, Attribute::Closure, p.closure, &mut attrs, r);
        if r.random::<f64>() < p.closure_second {
            draw_named(schema, Attribute::Closure, p.closure, &mut attrs, r);
        }
    }
    if r.random::<f64>() >= p.toe.empty {
        if r.random::<f64>() < p.toe.shape_p {
            draw_named(schema, Attribute::ToeStyle, p.toe.shape, &mut attrs, r);
        }
        if r.random::<f64>() < p.toe.open_p {
            draw_named(schema, Attribute::ToeStyle, p.toe.openness, &mut attrs, r);
        }
        if r.random::<f64>() < p.toe.deco_p {
            draw_named(schema, Attribute::ToeStyle, p.toe.decoration, &mut attrs, r);
        }
    }
    attrs
}

fn draw_named(schema: &Schema, attr: Attribute, table: &[(&str, f64)], out: &mut ItemAttrs, r: &mut Rng) {
    let weights: Vec<f64> = table.iter().map(|(_, w)| *w).collect();
    if let Some(i) = weighted_index(&weights, r) {
        if let Some(v) = schema.value_index(attr, table[i].0) {
            out.insert(attr, v);
        }
    }
}

struct Profile {
    /// Weights over [empty, Flat, Under 1in, …, 5in & over].
    heel: &'static [f64],
    /// Weights over [Men, Women, Boys, Girls, Men;Women, Boys;Girls].
    gender: &'static [f64],
    closure: &'static [(&'static str, f64)],
    closure_empty: f64,
    closure_second: f64,
    toe: &'static Toe,
}

struct Toe {
    empty: f64,
    shape_p: f64,
    shape: &'static [(&'static str, f64)],
    open_p: f64,
    openness: &'static [(&'static str, f64)],
    deco_p: f64,
    decoration: &'static [(&'static str, f64)],
}

const HEEL_SPORT: &[f64] = &[55., 8., 20., 14., 2., 1., 0., 0.];
const HEEL_HIGH: &[f64] = &[25., 0., 0., 6., 22., 27., 15., 5.];
const HEEL_FLAT: &[f64] = &[45., 35., 14., 6., 0., 0., 0., 0.];
const HEEL_CLOG: &[f64] = &[50., 4., 14., 20., 9., 3., 0., 0.];
const HEEL_BABY: &[f64] = &[80., 15., 5., 0., 0., 0., 0., 0.];
// The reference's Boots/Ankle sample, as counted.
const HEEL_ANKLE: &[f64] = &[1302., 384., 188., 1641., 607., 366., 252., 90.];
const HEEL_TALL: &[f64] = &[30., 12., 8., 28., 12., 6., 3., 1.];

const G_GENERAL: &[f64] = &[35., 54., 6., 7., 2., 0.];
const G_SPORT: &[f64] = &[42., 40., 8., 7., 3., 0.];
const G_WOMEN: &[f64] = &[2., 88., 0., 8., 2., 0.];
const G_MEN: &[f64] = &[65., 25., 6., 1., 3., 0.];
const G_KIDS: &[f64] = &[0., 0., 35., 40., 0., 25.];
const G_SLIPPER: &[f64] = &[30., 60., 4., 4., 2., 0.];

// The reference's Boots/Ankle closure sample, as counted.
const C_ANKLE: &[(&str, f64)] = &[
    ("Lace up", 2228.), ("Zipper", 1510.), ("Pull-on", 869.), ("Elastic Gore", 299.),
    ("Hook and Loop", 199.), ("Buckle", 103.), ("Toggle", 24.), ("Bungee", 23.), ("Snap", 22.),
    ("Button Loop", 10.), ("Spat Strap", 7.), ("Slip-On", 2.), ("Belt", 1.), ("Drawstring", 1.),
];
const C_TALL: &[(&str, f64)] = &[
    ("Zipper", 45.), ("Pull-on", 35.), ("Lace up", 10.), ("Buckle", 5.), ("Button Loop", 3.),
    ("Belt", 2.), ("Drawstring", 0.5),
];
const C_SPORT: &[(&str, f64)] = &[
    ("Lace up", 70.), ("Hook and Loop", 12.), ("Slip-On", 8.), ("Bungee", 5.), ("Elastic Gore", 3.),
    ("Zipper", 2.), ("Adjustable", 0.5),
];
const C_HEELS: &[(&str, f64)] = &[
    ("Slip-On", 35.), ("Ankle Strap", 25.), ("Buckle", 15.), ("Sling Back", 10.), ("Ankle Wrap", 5.),
    ("Zipper", 5.), ("Spat Strap", 1.), ("Adjustable", 0.5),
];
const C_FLATS: &[(&str, f64)] = &[
    ("Slip-On", 60.), ("Ankle Strap", 12.), ("Buckle", 10.), ("Sling Back", 5.), ("Elastic Gore", 5.),
    ("Hook and Loop", 4.), ("Lace up", 4.),
];
const C_LOAFER: &[(&str, f64)] = &[("Slip-On", 75.), ("Lace up", 15.), ("Elastic Gore", 5.), ("Monk Strap", 3.)];
const C_OXFORD: &[(&str, f64)] =
    &[("Lace up", 80.), ("Monk Strap", 8.), ("Slip-On", 6.), ("Buckle", 3.), ("Zipper", 3.)];
const C_CLOG: &[(&str, f64)] = &[("Slip-On", 75.), ("Buckle", 10.), ("Sling Back", 10.), ("Hook and Loop", 5.)];
const C_SANDAL: &[(&str, f64)] = &[
    ("Buckle", 35.), ("Slip-On", 20.), ("Hook and Loop", 15.), ("Ankle Strap", 15.), ("Sling Back", 10.),
    ("Toggle", 5.), ("Adjustable", 1.),
];
const C_SLIPPER: &[(&str, f64)] = &[("Slip-On", 85.), ("Pull-on", 5.), ("Hook and Loop", 5.), ("Elastic Gore", 5.)];
const C_BABY: &[(&str, f64)] = &[
    ("Hook and Loop", 45.), ("Slip-On", 20.), ("Lace up", 15.), ("Snap", 5.), ("Elastic Gore", 5.),
    ("Button Loop", 5.), ("Bungee", 5.),
];

const CLOSED: &[(&str, f64)] = &[("Closed Toe", 1.)];
const T_BOOT: Toe = Toe {
    empty: 0.18,
    shape_p: 0.92,
    shape: &[("Round Toe", 75.), ("Almond", 8.), ("Pointed Toe", 3.), ("Square Toe", 3.), ("Snip Toe", 1.),
        ("Bicycle Toe", 1.), ("Wide Toe Box", 1.)],
    open_p: 0.9,
    openness: &[("Closed Toe", 95.), ("Open Toe", 3.), ("Peep Toe", 2.)],
    deco_p: 0.18,
    decoration: &[("Capped Toe", 30.), ("Moc Toe", 27.), ("Bump Toe", 14.), ("Center Seam", 8.),
        ("Wingtip", 7.), ("Snub Toe", 3.), ("Medallion", 2.), ("Algonquin", 1.), ("Apron Toe", 1.)],
};
const T_SPORT: Toe = Toe {
    empty: 0.1,
    shape_p: 0.95,
    shape: &[("Round Toe", 90.), ("Wide Toe Box", 5.), ("Square Toe", 5.)],
    open_p: 0.85,
    openness: CLOSED,
    deco_p: 0.12,
    decoration: &[("Bump Toe", 50.), ("Capped Toe", 30.), ("Moc Toe", 10.), ("Center Seam", 10.)],
};
const T_HEELS: Toe = Toe {
    empty: 0.12,
    shape_p: 0.9,
    shape: &[("Pointed Toe", 35.), ("Almond", 30.), ("Round Toe", 25.), ("Square Toe", 5.), ("Snip Toe", 5.)],
    open_p: 0.8,
    openness: &[("Closed Toe", 60.), ("Peep Toe", 25.), ("Open Toe", 15.)],
    deco_p: 0.03,
    decoration: &[("Capped Toe", 1.)],
};
const T_FLATS: Toe = Toe {
    empty: 0.12,
    shape_p: 0.9,
    shape: &[("Round Toe", 50.), ("Pointed Toe", 20.), ("Almond", 20.), ("Square Toe", 10.)],
    open_p: 0.8,
    openness: &[("Closed Toe", 70.), ("Open Toe", 20.), ("Peep Toe", 10.)],
    deco_p: 0.08,
    decoration: &[("Capped Toe", 40.), ("Moc Toe", 40.), ("Apron Toe", 20.)],
};
const T_LOAFER: Toe = Toe {
    empty: 0.1,
    shape_p: 0.9,
    shape: &[("Round Toe", 70.), ("Almond", 20.), ("Square Toe", 10.)],
    open_p: 0.7,
    openness: CLOSED,
    deco_p: 0.5,
    decoration: &[("Moc Toe", 60.), ("Apron Toe", 20.), ("Algonquin", 10.), ("Center Seam", 10.)],
};
const T_OXFORD: Toe = Toe {
    empty: 0.08,
    shape_p: 0.9,
    shape: &[("Round Toe", 50.), ("Almond", 30.), ("Square Toe", 10.), ("Pointed Toe", 5.), ("Bicycle Toe", 5.)],
    open_p: 0.7,
    openness: CLOSED,
    deco_p: 0.55,
    decoration: &[("Wingtip", 35.), ("Capped Toe", 30.), ("Medallion", 20.), ("Apron Toe", 10.), ("Snub Toe", 5.)],
};
const T_SANDAL: Toe = Toe {
    empty: 0.3,
    shape_p: 0.4,
    shape: &[("Round Toe", 60.), ("Square Toe", 20.), ("Almond", 20.)],
    open_p: 0.9,
    openness: &[("Open Toe", 85.), ("Peep Toe", 10.), ("Closed Toe", 5.)],
    deco_p: 0.0,
    decoration: &[],
};
const T_CLOG: Toe = Toe {
    empty: 0.15,
    shape_p: 0.85,
    shape: &[("Round Toe", 70.), ("Almond", 10.), ("Square Toe", 20.)],
    open_p: 0.8,
    openness: &[("Closed Toe", 60.), ("Open Toe", 30.), ("Peep Toe", 10.)],
    deco_p: 0.05,
    decoration: &[("Moc Toe", 1.)],
};
const T_SLIPPER: Toe = Toe {
    empty: 0.2,
    shape_p: 0.85,
    shape: &[("Round Toe", 80.), ("Square Toe", 10.), ("Wide Toe Box", 10.)],
    open_p: 0.8,
    openness: &[("Closed Toe", 80.), ("Open Toe", 20.)],
    deco_p: 0.05,
    decoration: &[("Moc Toe", 1.)],
};
const T_BABY: Toe = Toe {
    empty: 0.25,
    shape_p: 0.9,
    shape: &[("Round Toe", 90.), ("Wide Toe Box", 10.)],
    open_p: 0.8,
    openness: &[("Closed Toe", 85.), ("Open Toe", 15.)],
    deco_p: 0.1,
    decoration: &[("Bump Toe", 1.)],
};

fn profile(subcategory: &str) -> Profile {
    let p = |heel, gender, closure, closure_empty, closure_second, toe| Profile {
        heel,
        gender,
        closure,
        closure_empty,
        closure_second,
        toe,
    };
    match subcategory {
        "Sneakers and Athletic Shoes" => p(HEEL_SPORT, G_SPORT, C_SPORT, 0.03, 0.15, &T_SPORT),
        "Heels" => p(HEEL_HIGH, G_WOMEN, C_HEELS, 0.05, 0.12, &T_HEELS),
        "Flats" => p(HEEL_FLAT, G_WOMEN, C_FLATS, 0.05, 0.08, &T_FLATS),
        "Loafers" | "Boat Shoes" => p(HEEL_SPORT, G_MEN, C_LOAFER, 0.04, 0.05, &T_LOAFER),
        "Oxfords" => p(HEEL_SPORT, G_MEN, C_OXFORD, 0.03, 0.05, &T_OXFORD),
        "Clogs and Mules" => p(HEEL_CLOG, G_GENERAL, C_CLOG, 0.08, 0.05, &T_CLOG),
        "Firstwalker" | "Prewalker" | "Crib Shoes" | "Prewalker Boots" => {
            p(HEEL_BABY, G_KIDS, C_BABY, 0.08, 0.1, &T_BABY)
        }
        "Ankle" => p(HEEL_ANKLE, G_GENERAL, C_ANKLE, 0.02, 0.1, &T_BOOT),
        "Mid-Calf" => p(HEEL_TALL, G_GENERAL, C_TALL, 0.03, 0.12, &T_BOOT),
        "Knee High" | "Over the Knee" => p(HEEL_TALL, G_WOMEN, C_TALL, 0.03, 0.12, &T_BOOT),
        "Flat" => p(HEEL_FLAT, G_GENERAL, C_SANDAL, 0.06, 0.12, &T_SANDAL),
        "Heel" => p(HEEL_HIGH, G_WOMEN, C_SANDAL, 0.06, 0.12, &T_SANDAL),
        "Athletic" => p(HEEL_SPORT, G_SPORT, C_SANDAL, 0.06, 0.12, &T_SANDAL),
        "Slipper Flats" | "Boot" => p(HEEL_FLAT, G_SLIPPER, C_SLIPPER, 0.1, 0.03, &T_SLIPPER),
        "Slipper Heels" => p(HEEL_HIGH, G_WOMEN, C_SLIPPER, 0.1, 0.03, &T_SLIPPER),
        _ => p(HEEL_SPORT, G_GENERAL, C_SPORT, 0.05, 0.05, &T_SPORT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_counts_sum_and_match_reference_at_full_size() {
        let c = scaled_counts(50_025);
        assert_eq!(c.iter().sum::<usize>(), 50_025);
        for (i, (_, _, n)) in SUBCATEGORIES.iter().enumerate() {
            assert_eq!(c[i], *n as usize);
        }
        assert_eq!(scaled_counts(1_000).iter().sum::<usize>(), 1_000);
    }

    #[test]
    fn every_item_has_category_and_subcategory_consistent() {
        let cat = generate(&GeneratorConfig { items: 2_000, seed: 1 });
        for item in &cat.items {
            let sub: Vec<u8> = item.attrs.values(Attribute::SubCategory).collect();
            let c: Vec<u8> = item.attrs.values(Attribute::Category).collect();
            assert_eq!(sub.len(), 1);
            assert_eq!(c, vec![SUBCATEGORIES[sub[0] as usize].1 as u8]);
        }
    }
}
