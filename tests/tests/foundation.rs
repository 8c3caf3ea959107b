//! Acceptance tests of the foundation: catalog, loader, simulated user, reward, retrieval, metrics,
//! baselines and determinism. Small and deterministic; the whole file runs in a few seconds.
//!
//! Run: `RAYON_NUM_THREADS=1 cargo test -p irec-tests --test foundation`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use irec_world::catalog::csv::{self, CatalogError};
use irec_world::catalog::{
    generate, reference, Action, Attribute, Catalog, FeatureConfig, GeneratorConfig, Item, ItemAttrs, ItemId,
    Schema, Split, VisualFeatures, NUM_ATTRS,
};
use irec_world::metrics::{Metrics, SessionOutcome};
use irec_world::policy::{evaluate, OraclePolicy, RandomPolicy, TrackerPolicy};
use irec_world::rng;
use irec_world::sim::{Environment, SessionSpec, Feedback, Lexicon, Pool, RewardConfig, SimulatedUser, Transcript, World, WorldConfig, TEMPLATES};
use proptest::prelude::*;
use rand::Rng as _;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A generated world (catalog + synthetic features) of `items` items.
fn world(items: usize, seed: u64) -> Arc<World> {
    let cfg = WorldConfig {
        catalog: GeneratorConfig { items, seed },
        features: FeatureConfig { seed, ..FeatureConfig::default() },
        ..WorldConfig::default()
    };
    Arc::new(World::build(&cfg).expect("a generated world always builds"))
}

fn tracker_and_random(env: &Environment, sessions: usize, seed: u64, threads: usize) -> (Vec<Transcript>, Vec<Transcript>) {
    let lexicon = Arc::new(env.world.lexicon.clone());
    let index = Arc::new(env.index.clone());
    let tracker = evaluate(env, || TrackerPolicy::new(lexicon.clone(), index.clone()), sessions, seed, threads);
    let random = evaluate(env, || RandomPolicy::new(&env.world.catalog.schema), sessions, seed, threads);
    (tracker, random)
}

/// Item attributes from (attribute, value name) pairs of the reference schema.
fn cells(pairs: &[(Attribute, &str)]) -> ItemAttrs {
    let schema = Schema::reference();
    let mut attrs = ItemAttrs::default();
    for (a, name) in pairs {
        let v = schema.value_index(*a, name).unwrap_or_else(|| panic!("{name} is not a {a:?} value"));
        attrs.insert(*a, v);
    }
    attrs
}

/// An action asking for the given (attribute, value name) pairs, "no preference" elsewhere.
fn ask(pairs: &[(Attribute, &str)]) -> Action {
    let schema = Schema::reference();
    pairs.iter().fold(Action::default(), |act, (a, name)| act.with_value(*a, schema.value_index(*a, name)))
}

/// A hand-built world: items with hand-set attributes and 2-d feature vectors, and a split.
fn hand_world(items: &[(ItemAttrs, [f32; 2])], train: Vec<ItemId>, test: Vec<ItemId>) -> Arc<World> {
    let catalog = Catalog {
        schema: Schema::reference(),
        items: items.iter().enumerate().map(|(i, (attrs, _))| Item { cid: format!("{}-1", 100 + i), attrs: *attrs }).collect(),
        split: Split { train, test },
    };
    let features = VisualFeatures { dim: 2, data: items.iter().flat_map(|(_, v)| *v).collect() };
    Arc::new(World::from_parts(catalog, features))
}

fn hand_env(world: &Arc<World>, pool: Pool, reward: RewardConfig) -> Environment {
    let truth = world.catalog.truth();
    Environment::new(world.clone(), pool, &truth, Arc::new(truth.clone()), reward)
}

// ---------------------------------------------------------------------------------------------
// Baselines
// ---------------------------------------------------------------------------------------------

#[test]
fn oracle_succeeds_at_turn_one_and_tracker_is_far_above_random() {
    let w = world(5_000, 11);
    let env = Environment::with_truth(w.clone(), Pool::Test);
    assert_eq!(env.index.len(), 1_000);
    let oracle = evaluate(&env, OraclePolicy::default, 300, 3, 2);
    assert_eq!(oracle.len(), 300);
    for t in &oracle {
        assert_eq!(t.success_turn(), Some(1), "the oracle must succeed at turn 1:\n{}", t.render());
        assert!(w.catalog.split.test.binary_search(&t.target).is_ok(), "targets come from the test pool");
    }
    let m = Metrics::of_transcripts(&oracle, 50);
    assert_eq!((m.sr10, m.ni.mean, m.nv.mean), (1.0, 1.0, 0.0));

    let (tracker, random) = tracker_and_random(&env, 300, 3, 2);
    // The same numbered sessions: same targets, same wishes.
    for ((o, t), r) in oracle.iter().zip(&tracker).zip(&random) {
        assert_eq!((o.target, o.desires), (t.target, t.desires));
        assert_eq!((o.target, o.desires), (r.target, r.desires));
    }
    let mt = Metrics::of_transcripts(&tracker, 50);
    let mr = Metrics::of_transcripts(&random, 50);
    assert!(mt.sr10 >= 0.8, "tracker SR@10 {}", mt.sr10);
    assert!(mr.sr10 <= 0.3, "random SR@10 {}", mr.sr10);
    assert!(mt.ni.mean < mr.ni.mean);
    assert!(mt.sr10 <= mt.sr20 && mt.sr20 <= mt.sr30);
}

// ---------------------------------------------------------------------------------------------
// Generated catalog
// ---------------------------------------------------------------------------------------------

/// Criterion: at the default size every Category and SubCategory count is within 1% of the reference
/// count, relative to the reference count (|generated − reference| ≤ 0.01 · reference). The
/// generator scales by largest remainder, so at 50,025 items the counts are in fact exact.
#[test]
fn generated_marginals_match_the_reference_at_the_default_size() {
    let started = Instant::now();
    let cat = generate(&GeneratorConfig::default());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "generating 50,025 items took {took:?}");
    assert_eq!(cat.len(), 50_025);
    assert_eq!((cat.split.train.len(), cat.split.test.len()), (40_020, 10_005));
    let m = cat.marginals();
    let schema = &cat.schema;
    let close = |got: usize, want: u32, what: &str| {
        let diff = (got as f64 - want as f64).abs();
        assert!(diff <= 0.01 * want as f64, "{what}: generated {got}, reference {want}");
    };
    for (name, want) in reference::CATEGORIES {
        let v = schema.value_index(Attribute::Category, name).unwrap();
        close(m.values[Attribute::Category.index()][v as usize], *want, name);
    }
    for (name, _, want) in reference::SUBCATEGORIES {
        let v = schema.value_index(Attribute::SubCategory, name).unwrap();
        close(m.values[Attribute::SubCategory.index()][v as usize], *want, name);
    }
    // Category and SubCategory are always filled, single-valued and consistent.
    for a in [Attribute::Category, Attribute::SubCategory] {
        assert_eq!((m.empty[a.index()], m.multi[a.index()]), (0, 0));
    }
    let heel_empty = m.empty[Attribute::HeelHeight.index()] as f64 / m.items as f64;
    assert!((0.30..=0.60).contains(&heel_empty), "HeelHeight empty share {heel_empty}");
    assert_eq!(m.multi[Attribute::HeelHeight.index()], 0, "HeelHeight is single-valued");
    let toe = Attribute::ToeStyle.index();
    let toe_filled = m.items - m.empty[toe];
    let toe_multi = m.multi[toe] as f64 / toe_filled as f64;
    assert!(toe_multi > 0.5, "ToeStyle multi-valued share of filled cells {toe_multi}");
    assert!(m.multi[toe] as f64 > 0.5 * m.items as f64, "ToeStyle is multi-valued in most items");
    // "Round Toe;Closed Toe" is the most common ToeStyle cell.
    let mut cells_count: HashMap<String, usize> = HashMap::new();
    for item in &cat.items {
        *cells_count.entry(schema.render_cell(&item.attrs, Attribute::ToeStyle)).or_default() += 1;
    }
    let top = cells_count.iter().max_by_key(|(c, n)| (**n, std::cmp::Reverse((*c).clone()))).unwrap();
    assert_eq!(top.0, "Round Toe;Closed Toe");
}

/// Criterion at other sizes: each Category / SubCategory share within 1 percentage point (absolute)
/// of the reference share.
#[test]
fn generated_shares_hold_at_other_sizes() {
    for items in [1_000, 7_777] {
        let cat = generate(&GeneratorConfig { items, seed: 3 });
        let m = cat.marginals();
        assert_eq!(cat.split.test.len(), (items as f64 / 5.0).round() as usize);
        for (i, (name, _, want)) in reference::SUBCATEGORIES.iter().enumerate() {
            let got = m.values[Attribute::SubCategory.index()][i] as f64 / items as f64;
            let want = *want as f64 / reference::REFERENCE_ITEMS as f64;
            assert!((got - want).abs() < 0.01, "{name} at {items}: {got} vs {want}");
        }
        for (i, (name, want)) in reference::CATEGORIES.iter().enumerate() {
            let got = m.values[Attribute::Category.index()][i] as f64 / items as f64;
            let want = *want as f64 / reference::REFERENCE_ITEMS as f64;
            assert!((got - want).abs() < 0.01, "{name} at {items}: {got} vs {want}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The meta-data.csv loader
// ---------------------------------------------------------------------------------------------

/// A small file in the real format: quoted fields, a comma and escaped quotes inside a quoted
/// cell, a quoted cell spanning two lines, ';'-separated multi-values, empty cells, and one value
/// the reference schema does not name.
const REAL_FORMAT: &str = "\
CID,Category,SubCategory,HeelHeight,Insole,Closure,Gender,Material,ToeStyle
7965307-5291,Shoes,Sneakers and Athletic Shoes,,Padded,Lace up,Men,Leather;Mesh,Round Toe;Closed Toe
\"8020877-6\",\"Boots\",\"Ankle\",\"1in - 1 3/4in\",\"\",\"Lace up;Zipper\",\"Women\",\"Leather\",\"Round Toe\"
\"7831425-18\",Sandals,Flat,Flat,,\"Buckle;Hook and Loop\",\"Boys;Girls\",\"Synthetic, \"\"vegan\"\"\",Open Toe
8000012-3,Slippers,Slipper Flats,,,,Women,\"Fleece
Suede\",
8102234-77,Shoes,Heels,4in - 4 3/4in,,Ankle Strap;Velcro Wrap,Women,,Pointed Toe;Peep Toe
";

/// Attribute cells of an item as sorted value names.
fn named_cells(cat: &Catalog, id: usize) -> Vec<BTreeSet<String>> {
    Attribute::ALL
        .iter()
        .map(|a| cat.items[id].attrs.values(*a).map(|v| cat.schema.value_name(*a, v).to_string()).collect())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn assert_same_catalog(a: &Catalog, b: &Catalog) {
    assert_eq!(a.len(), b.len());
    for i in 0..a.len() {
        assert_eq!(a.items[i].cid, b.items[i].cid);
        assert_eq!(named_cells(a, i), named_cells(b, i), "item {}", a.items[i].cid);
    }
}

#[test]
fn loader_reads_the_real_format_with_lf_and_crlf() {
    let cat = csv::parse(REAL_FORMAT, 1).unwrap();
    assert_eq!(cat.len(), 5);
    let cids: Vec<&str> = cat.items.iter().map(|i| i.cid.as_str()).collect();
    assert_eq!(cids, ["7965307-5291", "8020877-6", "7831425-18", "8000012-3", "8102234-77"]);
    // Category, SubCategory, HeelHeight, Closure, Gender, ToeStyle.
    assert_eq!(
        named_cells(&cat, 0),
        [set(&["Shoes"]), set(&["Sneakers and Athletic Shoes"]), set(&[]), set(&["Lace up"]), set(&["Men"]), set(&["Round Toe", "Closed Toe"])]
    );
    assert_eq!(
        named_cells(&cat, 1),
        [set(&["Boots"]), set(&["Ankle"]), set(&["1in - 1 3/4in"]), set(&["Lace up", "Zipper"]), set(&["Women"]), set(&["Round Toe"])]
    );
    assert_eq!(
        named_cells(&cat, 2),
        [set(&["Sandals"]), set(&["Flat"]), set(&["Flat"]), set(&["Buckle", "Hook and Loop"]), set(&["Boys", "Girls"]), set(&["Open Toe"])]
    );
    assert_eq!(
        named_cells(&cat, 3),
        [set(&["Slippers"]), set(&["Slipper Flats"]), set(&[]), set(&[]), set(&["Women"]), set(&[])]
    );
    assert_eq!(
        named_cells(&cat, 4),
        [set(&["Shoes"]), set(&["Heels"]), set(&["4in - 4 3/4in"]), set(&["Ankle Strap", "Velcro Wrap"]), set(&["Women"]), set(&["Pointed Toe", "Peep Toe"])]
    );
    // The unknown value extends the schema; the reference part is untouched.
    let closures = &cat.schema.values[Attribute::Closure.index()];
    assert_eq!(closures.len(), reference::CLOSURES.len() + 1);
    assert_eq!(closures.last().map(String::as_str), Some("Velcro Wrap"));
    assert_eq!(cat.split.train.len() + cat.split.test.len(), 5);

    // CRLF line endings (also inside the quoted two-line cell) and a byte-order mark change nothing.
    let crlf = REAL_FORMAT.replace('\n', "\r\n");
    assert!(crlf.contains("\r\n8000012-3") && !crlf.contains("\r\r"));
    let cat_crlf = csv::parse(&crlf, 1).unwrap();
    assert_same_catalog(&cat, &cat_crlf);
    assert_eq!(cat.schema, cat_crlf.schema);
    let bom = format!("\u{feff}{crlf}");
    assert_same_catalog(&cat, &csv::parse(&bom, 1).unwrap());
    // No trailing newline, and blank lines between rows, change nothing either.
    assert_same_catalog(&cat, &csv::parse(REAL_FORMAT.trim_end(), 1).unwrap());
    assert_same_catalog(&cat, &csv::parse(&REAL_FORMAT.replace("\n8102234", "\n\n8102234"), 1).unwrap());
}

#[test]
fn loader_round_trips_through_write_and_parse() {
    for (text, what) in [(REAL_FORMAT.to_string(), "LF"), (REAL_FORMAT.replace('\n', "\r\n"), "CRLF")] {
        let cat = csv::parse(&text, 4).unwrap();
        let back = csv::parse(&csv::write(&cat), 4).unwrap();
        assert_same_catalog(&cat, &back);
        assert_eq!(cat, back, "{what}: items, schema and split survive write + parse");
    }
    let generated = generate(&GeneratorConfig { items: 2_000, seed: 8 });
    let written = csv::write(&generated);
    assert!(written.starts_with("CID,Category,SubCategory,HeelHeight,Insole,Closure,Gender,Material,ToeStyle\n"));
    let back = csv::parse(&written, 8).unwrap();
    assert_eq!(back.schema, generated.schema);
    assert_eq!(back.items, generated.items);
    assert_eq!(back.split, generated.split, "the same split seed gives the same split");
    // And through a file on disk.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta-data.csv");
    std::fs::write(&path, &written).unwrap();
    assert_eq!(csv::load(&path, 8).unwrap(), generated);
}

/// Each malformed input fails with an error naming its line and its column.
#[test]
fn malformed_rows_name_their_line_and_column() {
    const H: &str = "CID,Category,SubCategory,HeelHeight,Insole,Closure,Gender,Material,ToeStyle\n";
    const OK1: &str = "1-1,Shoes,Heels,,,Buckle,Women,,Almond\n";
    const OK2: &str = "2-1,Boots,Ankle,Flat,,Zipper,Men,,Round Toe\n";
    // (what, text, line, column)
    let cases: Vec<(&str, String, usize, &str)> = vec![
        ("too few fields", format!("{H}{OK1}3-1,Shoes,Heels,,,Buckle,Women,\n"), 3, "9"),
        ("too many fields", format!("{H}{OK1}{OK2}3-1,Shoes,Heels,,,Buckle,Women,,Almond,extra\n"), 4, "10"),
        ("unterminated quote", format!("{H}{OK1}\"3-1,Shoes,Heels,,,Buckle,Women,,Almond\n{OK2}"), 3, "1"),
        ("unterminated quote in a later column", format!("{H}{OK1}{OK2}3-1,Shoes,Heels,,,\"Buckle,Women,,Almond\n"), 4, "6"),
        ("empty CID", format!("{H}{OK1},Shoes,Heels,,,Buckle,Women,,Almond\n"), 3, "CID"),
        ("blank CID", format!("{H}  ,Shoes,Heels,,,Buckle,Women,,Almond\n"), 2, "CID"),
        ("duplicate CID", format!("{H}{OK1}{OK2}1-1,Sandals,Flat,,,Buckle,Women,,\n"), 4, "CID"),
        ("empty Category", format!("{H}{OK1}3-1,,Heels,,,Buckle,Women,,Almond\n"), 3, "Category"),
        ("empty quoted Category", format!("{H}3-1,\"\",Heels,,,Buckle,Women,,Almond\n"), 2, "Category"),
        ("empty SubCategory", format!("{H}{OK1}3-1,Shoes,;,,,Buckle,Women,,Almond\n"), 3, "SubCategory"),
        ("stray quote", format!("{H}{OK1}{OK2}3-1,Shoes,He\"els,,,Buckle,Women,,Almond\n"), 4, "3"),
        ("text after a closing quote", format!("{H}3-1,\"Shoes\"x,Heels,,,Buckle,Women,,Almond\n"), 2, "2"),
        ("header without ToeStyle", "CID,Category,SubCategory,HeelHeight,Insole,Closure,Gender,Material\n1-1,Shoes,Heels,,,,,\n".into(), 1, "ToeStyle"),
        ("header without CID", "Id,Category,SubCategory,HeelHeight,Insole,Closure,Gender,Material,ToeStyle\n".into(), 1, "CID"),
        // A quoted two-line cell earlier in the file shifts the line numbers of later rows.
        ("line count after a two-line cell", format!("{H}1-1,Shoes,Heels,,,Buckle,Women,\"a\nb\",Almond\n,Shoes,Heels,,,,,,\n"), 4, "CID"),
        ("CRLF file", format!("{H}{OK1}3-1,Shoes,Heels,,,Buckle,Women,\n").replace('\n', "\r\n"), 3, "9"),
    ];
    for (what, text, line, column) in cases {
        let err = csv::parse(&text, 1).expect_err(what);
        let msg = err.to_string();
        match &err {
            CatalogError::Malformed { line: l, column: c, .. } => {
                assert_eq!((*l, c.as_str()), (line, column), "{what}: {msg}");
            }
            other => panic!("{what}: expected a malformed-row error, got {other:?}"),
        }
        assert!(msg.contains(&format!("line {line}")) && msg.contains(&format!("column {column}")), "{what}: {msg}");
    }
    // Nothing to read.
    for empty in ["", "\n\n", "CID,Category,SubCategory,HeelHeight,Insole,Closure,Gender,Material,ToeStyle\n"] {
        assert!(matches!(csv::parse(empty, 1), Err(CatalogError::Empty)), "{empty:?}");
    }
}

#[test]
fn loader_reports_invalid_utf8_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta-data.csv");
    let mut bytes = REAL_FORMAT.as_bytes().to_vec();
    let third_line = REAL_FORMAT.match_indices('\n').nth(1).unwrap().0 + 5;
    bytes[third_line] = 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let msg = csv::load(&path, 1).unwrap_err().to_string();
    assert!(msg.contains("line 3") && msg.contains("UTF-8"), "{msg}");
    let missing = dir.path().join("absent.csv");
    let msg = csv::load(&missing, 1).unwrap_err().to_string();
    assert!(msg.contains("absent.csv"), "{msg}");
}

/// One random edit of a text: insert, delete or replace a character, biased towards the characters
/// that matter to CSV.
fn mutate(text: &str, edits: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for (pos, op, c) in edits {
        let pos = if chars.is_empty() { 0 } else { pos % (chars.len() + 1) };
        match op % 3 {
            0 => chars.insert(pos, *c),
            1 if pos < chars.len() => {
                chars.remove(pos);
            }
            _ if pos < chars.len() => chars[pos] = *c,
            _ => chars.push(*c),
        }
    }
    chars.into_iter().collect()
}

fn csv_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::sample::select(vec!['"', ',', ';', '\n', '\r', ' ', '\u{feff}']),
        1 => any::<char>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bytes: parse returns Ok or Err, never panics.
    #[test]
    fn parse_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400), with_header in any::<bool>()) {
        let body = String::from_utf8_lossy(&bytes);
        let text = if with_header { format!("{}\n{body}", csv::HEADER.join(",")) } else { body.into_owned() };
        let _ = csv::parse(&text, 1);
        let _ = csv::parse_records(&text);
    }

    /// Random edits of a valid file: Ok or Err, never a panic; an Ok parse is a consistent catalog.
    #[test]
    fn parse_never_panics_on_mutated_files(
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), csv_char()), 1..6),
        crlf in any::<bool>(),
    ) {
        let base = if crlf { REAL_FORMAT.replace('\n', "\r\n") } else { REAL_FORMAT.to_string() };
        let text = mutate(&base, &edits);
        match csv::parse(&text, 1) {
            Ok(cat) => {
                prop_assert!(!cat.is_empty());
                prop_assert_eq!(cat.split.train.len() + cat.split.test.len(), cat.len());
                for item in &cat.items {
                    prop_assert!(item.attrs.set(Attribute::Category) != 0 && item.attrs.set(Attribute::SubCategory) != 0);
                }
                // Whatever parsed also round-trips.
                let back = csv::parse(&csv::write(&cat), 1);
                prop_assert!(back.is_ok());
                let back = back.unwrap();
                prop_assert_eq!(back.items.len(), cat.items.len());
                for i in 0..cat.len() {
                    prop_assert_eq!(named_cells(&cat, i), named_cells(&back, i));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.is_empty());
                if let CatalogError::Malformed { line, .. } = e {
                    prop_assert!(line >= 1 && line <= text.matches('\n').count() + 1, "{}", msg);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------------------------

fn render_all(ts: &[Transcript]) -> String {
    ts.iter().map(Transcript::render).collect()
}

#[test]
fn same_seed_same_transcripts_whatever_the_thread_count() {
    // Two worlds built independently from the same configuration.
    let w1 = world(3_000, 5);
    let w2 = world(3_000, 5);
    assert_eq!(w1.catalog, w2.catalog);
    assert_eq!(w1.features, w2.features);
    let env1 = Environment::with_truth(w1, Pool::Test);
    let env2 = Environment::with_truth(w2, Pool::Test);
    let run = |env: &Environment, seed: u64, threads: usize| {
        let (t, r) = tracker_and_random(env, 50, seed, threads);
        assert_eq!((t.len(), r.len()), (50, 50));
        format!("{}{}", render_all(&t), render_all(&r))
    };
    let reference = run(&env1, 7, 1);
    assert!(reference.lines().count() > 200, "transcripts have turns");
    assert_eq!(reference, run(&env1, 7, 1), "same seed, same thread count");
    assert_eq!(reference, run(&env2, 7, 1), "rebuilt world");
    for threads in [2, 3, 8, 64] {
        assert_eq!(reference, run(&env1, 7, threads), "{threads} threads");
    }
    let other = run(&env1, 8, 1);
    assert_ne!(reference, other, "different seeds, different transcripts");
    // Not just one session: most sessions differ.
    let (a, _) = tracker_and_random(&env1, 50, 7, 1);
    let (b, _) = tracker_and_random(&env1, 50, 8, 1);
    let differing = a.iter().zip(&b).filter(|(x, y)| x.render() != y.render()).count();
    assert!(differing >= 45, "only {differing} of 50 sessions differ");
    // A different world seed changes the world.
    let w3 = world(3_000, 6);
    assert_ne!(reference, run(&Environment::with_truth(w3, Pool::Test), 7, 1));
}

// ---------------------------------------------------------------------------------------------
// Reward
// ---------------------------------------------------------------------------------------------

/// ‖v(a) − v(b)‖₂, computed here.
fn l2(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// ‖attr(a) − attr(b)‖₀ over the six cells (a cell differs when its value sets differ), computed here.
fn l0(a: &ItemAttrs, b: &ItemAttrs) -> u32 {
    (0..NUM_ATTRS).filter(|i| a.0[*i] != b.0[*i]).count() as u32
}

/// The formula, λ = 0.5.
fn formula(shown: &(ItemAttrs, [f32; 2]), target: &(ItemAttrs, [f32; 2])) -> f32 {
    1.0 - 0.5 * l2(shown.1, target.1) - 0.5 * l0(&shown.0, &target.0) as f32
}

fn reward_items() -> Vec<(ItemAttrs, [f32; 2])> {
    use Attribute::*;
    let target = [(Category, "Boots"), (SubCategory, "Ankle"), (HeelHeight, "1in - 1 3/4in"), (Closure, "Zipper"), (Gender, "Women"), (ToeStyle, "Round Toe")];
    let with = |over: &[(Attribute, &str)]| {
        let mut pairs: Vec<(Attribute, &str)> = target.iter().filter(|(a, _)| !over.iter().any(|(b, _)| a == b)).copied().collect();
        pairs.extend(over.iter().filter(|(_, n)| !n.is_empty()).copied());
        cells(&pairs)
    };
    vec![
        // 0: the target.
        (cells(&target), [1.0, 0.0]),
        // 1: men's instead of women's. L0 = 1, distance 0.5.
        (with(&[(Gender, "Men")]), [1.0, 0.5]),
        // 2: differs in every cell (ToeStyle as a set: {Round, Closed} ≠ {Round}). L0 = 6, distance 2.
        (
            cells(&[(Category, "Shoes"), (SubCategory, "Sneakers and Athletic Shoes"), (Closure, "Lace up"), (Gender, "Men"), (ToeStyle, "Round Toe"), (ToeStyle, "Closed Toe")]),
            [-1.0, 0.0],
        ),
        // 3: closed toe but not round. L0 = 1, distance 1.
        (with(&[(ToeStyle, "Closed Toe")]), [0.2, 0.6]),
        // 4: the same cells as the target, another look. L0 = 0, distance 1.
        (cells(&target), [0.4, 0.8]),
        // 5: women's flat sandals.
        (cells(&[(Category, "Sandals"), (SubCategory, "Flat"), (Gender, "Women")]), [0.0, 1.0]),
    ]
}

#[test]
fn reward_is_the_formula_with_the_failure_penalty() {
    use Attribute::*;
    let items = reward_items();
    let w = hand_world(&items, vec![0, 5], vec![1, 2, 3, 4]);
    let target_cells: Vec<(Attribute, &str)> =
        vec![(Category, "Boots"), (SubCategory, "Ankle"), (HeelHeight, "1in - 1 3/4in"), (Closure, "Zipper"), (Gender, "Women"), (ToeStyle, "Round Toe")];

    // A session cut off at 3 turns: the last turn carries the −3.
    let env = hand_env(&w, Pool::Test, RewardConfig { max_turns: 3, ..RewardConfig::default() });
    let mut ep = env.start(&SessionSpec { target: 0, seed: 1 });
    let plan = [
        (ask(&[(Category, "Boots"), (Gender, "Men")]), 1, 0.25),       // 1 − 0.5·0.5 − 0.5·1
        (ask(&[(Category, "Shoes")]), 2, -3.0),                         // 1 − 0.5·2 − 0.5·6
        (ask(&[(Category, "Boots"), (ToeStyle, "Closed Toe")]), 3, 0.0 - 3.0), // 1 − 0.5·1 − 0.5·1, then −3
    ];
    for (k, (action, shown, want)) in plan.iter().enumerate() {
        let turn = ep.step(*action).expect("the session is running").clone();
        assert_eq!(turn.observation.shown, *shown, "turn {}", k + 1);
        let mut expected = formula(&items[*shown as usize], &items[0]);
        if k + 1 == plan.len() {
            expected += -3.0;
        }
        assert!((turn.reward - expected).abs() < 1e-5, "turn {}: reward {} vs formula {expected}", k + 1, turn.reward);
        assert!((turn.reward - want).abs() < 1e-5, "turn {}: reward {} vs hand value {want}", k + 1, turn.reward);
        assert!(matches!(turn.feedback, Feedback::Missing { .. }));
    }
    assert!(ep.is_done());
    assert!(ep.step(Action::default()).is_none(), "no turn after the cap");
    let t = ep.into_transcript();
    assert!(!t.success);
    assert_eq!(t.turns.len(), 3);

    // A success: no penalty, even on the last allowed turn.
    let mut ep = env.start(&SessionSpec { target: 0, seed: 2 });
    let turn = ep.step(ask(&target_cells)).unwrap().clone();
    assert_eq!((turn.observation.shown, turn.feedback), (4, Feedback::Good));
    assert_eq!(turn.observation.utterance, "Good");
    assert!((turn.reward - 0.5).abs() < 1e-6, "1 − 0.5·1 − 0.5·0, got {}", turn.reward);
    assert!(ep.is_done());
    let mut ep = env.start(&SessionSpec { target: 0, seed: 3 });
    for action in [ask(&[(Category, "Boots"), (Gender, "Men")]), ask(&[(Category, "Shoes")]), ask(&target_cells)] {
        ep.step(action);
    }
    let t = ep.into_transcript();
    assert!(t.success && t.turns.len() == 3);
    assert!((t.turns[2].reward - 0.5).abs() < 1e-6, "success on the last turn: no penalty");

    // A pool that runs dry before the cap: the session fails and its last turn carries the −3.
    let env = hand_env(&w, Pool::Train, RewardConfig::default());
    let mut ep = env.start(&SessionSpec { target: 3, seed: 4 });
    let mut shown = Vec::new();
    while let Some(turn) = ep.step(Action::default()) {
        shown.push(turn.observation.shown);
    }
    let t = ep.into_transcript();
    assert!(!t.success);
    shown.sort_unstable();
    assert_eq!(shown, [0, 5]);
    for (k, turn) in t.turns.iter().enumerate() {
        let mut expected = formula(&items[turn.observation.shown as usize], &items[3]);
        if k + 1 == t.turns.len() {
            expected -= 3.0;
        }
        assert!((turn.reward - expected).abs() < 1e-5, "exhausted pool, turn {}: {} vs {expected}", k + 1, turn.reward);
    }

    // Default settings: the paper's λ, penalty and cap.
    let d = RewardConfig::default();
    assert_eq!((d.lambda, d.failure_penalty, d.max_turns), (0.5, -3.0, 50));
}

#[test]
fn reward_follows_the_formula_on_random_sessions() {
    // Every turn of random sessions on a generated world, against the formula computed here from
    // the features and the cells.
    let w = world(2_000, 21);
    let env = Environment::with_truth(w.clone(), Pool::Test);
    let ts = evaluate(&env, || RandomPolicy::new(&w.catalog.schema), 40, 9, 1);
    let mut checked = 0;
    let mut failures = 0;
    for t in &ts {
        let target = t.target as usize;
        for (k, turn) in t.turns.iter().enumerate() {
            let s = turn.observation.shown as usize;
            let (fs, ft) = (w.features.get(s as u32), w.features.get(target as u32));
            let dist = fs.iter().zip(ft).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
            let mut expected = 1.0 - 0.5 * dist - 0.5 * l0(&w.catalog.items[s].attrs, &w.catalog.items[target].attrs) as f32;
            if k + 1 == t.turns.len() && !t.success {
                expected -= 3.0;
                failures += 1;
            }
            assert!((turn.reward - expected).abs() < 1e-4, "{} vs {expected}", turn.reward);
            // The visual term is within [0, 1] (unit features), the attribute term within [0, 3].
            assert!((0.0..=1.0 + 1e-5).contains(&(0.5 * dist)));
            checked += 1;
        }
    }
    assert!(checked > 500 && failures > 0, "{checked} turns, {failures} failures");
}

// ---------------------------------------------------------------------------------------------
// The template bank and the words
// ---------------------------------------------------------------------------------------------

/// A parser written independently of `Lexicon::read`: an utterance is a template's prefix, a slot,
/// the template's suffix, and maybe a full stop; the slot is looked up case-insensitively among the
/// surface forms. Returns every (template, attribute, value) reading.
struct TestParser {
    forms: HashMap<String, (Attribute, u8)>,
}

impl TestParser {
    fn new(schema: &Schema, lexicon: &Lexicon) -> TestParser {
        let mut forms = HashMap::new();
        for a in Attribute::ALL {
            for v in 0..schema.num_values(a) as u8 {
                let form = lexicon.surface(a, v).to_lowercase();
                let clash = forms.insert(form.clone(), (a, v));
                assert!(clash.is_none(), "surface form {form:?} names two values");
            }
        }
        TestParser { forms }
    }

    fn parse(&self, utterance: &str) -> Vec<(usize, Attribute, u8)> {
        let mut out = Vec::new();
        let bodies = [Some(utterance), utterance.strip_suffix('.')];
        for body in bodies.into_iter().flatten() {
            for (k, t) in TEMPLATES.iter().enumerate() {
                let (pre, suf) = t.text.split_once("{v}").expect("every template has a slot");
                let Some(slot) = body.strip_prefix(pre).and_then(|s| s.strip_suffix(suf)) else { continue };
                if let Some((a, v)) = self.forms.get(&slot.to_lowercase()) {
                    out.push((k, *a, *v));
                }
            }
        }
        out
    }
}

#[test]
fn every_template_is_used_and_utterances_parse_back_to_their_attribute_and_value() {
    let cat = generate(&GeneratorConfig { items: 3_000, seed: 13 });
    let lexicon = Lexicon::new(&cat.schema);
    let parser = TestParser::new(&cat.schema, &lexicon);
    assert!(TEMPLATES.len() >= 15, "at least 15 templates");
    assert_eq!(TEMPLATES.iter().filter(|t| t.text.matches("{v}").count() == 1).count(), TEMPLATES.len());
    let mut used = vec![0usize; TEMPLATES.len()];
    let mut per_attr = [0usize; NUM_ATTRS];
    let (mut utterances, mut stops, mut lower, mut negated) = (0, 0, 0, 0);
    let mut r = rng::rng(99);
    for u in 0..3_000u64 {
        let target = r.random_range(0..cat.len());
        let mut user = SimulatedUser::new(target as ItemId, &cat.items[target].attrs, rng::derive(99, u));
        for _ in 0..2 {
            let shown = &cat.items[r.random_range(0..cat.len())].attrs;
            let (fb, text) = user.respond(shown, &lexicon);
            match fb {
                Feedback::Good => {
                    assert_eq!(text, "Good");
                    assert!(user.desires.satisfied_by(shown));
                }
                Feedback::Missing { attribute, value, template } => {
                    utterances += 1;
                    used[template as usize] += 1;
                    per_attr[attribute.index()] += 1;
                    stops += usize::from(text.ends_with('.'));
                    lower += usize::from(!text.contains(lexicon.surface(attribute, value)));
                    negated += usize::from(TEMPLATES[template as usize].negated);
                    // The named value is a wish the shown item violates.
                    assert_eq!(user.desires.get(attribute), Some(value));
                    assert!(!shown.has(attribute, value));
                    let readings = parser.parse(&text);
                    assert!(!readings.is_empty(), "no reading of {text:?}");
                    for (_, a, v) in &readings {
                        assert_eq!((*a, *v), (attribute, value), "{text:?} read as {a:?}/{v}");
                    }
                    assert!(readings.iter().any(|(k, _, _)| *k == template as usize), "{text:?}: template {template}");
                    // The tracker's rule-based reader agrees.
                    assert_eq!(lexicon.read(&text), Some((attribute, value)), "Lexicon::read on {text:?}");
                }
            }
        }
    }
    assert!(utterances >= 4_000, "{utterances} utterances");
    for (k, n) in used.iter().enumerate() {
        assert!(*n > 0, "template {k} ({:?}) never used", TEMPLATES[k].text);
    }
    for a in Attribute::ALL {
        assert!(per_attr[a.index()] > 0, "{a:?} never named");
    }
    assert!(negated > 0 && stops > 0 && stops < utterances && lower > 0);
}

#[test]
fn negated_templates_still_ask_for_the_value() {
    let schema = Schema::reference();
    let lexicon = Lexicon::new(&schema);
    let parser = TestParser::new(&schema, &lexicon);
    // The paper's example and the other negated wording.
    let flat = schema.value_index(Attribute::HeelHeight, "Flat").unwrap();
    assert_eq!(parser.parse("I do not need the shoes without flat."), vec![(13, Attribute::HeelHeight, flat)]);
    assert!(TEMPLATES[13].negated && TEMPLATES[14].negated);
    assert_eq!(TEMPLATES.iter().filter(|t| t.negated).count(), 2);
    let zipper = schema.value_index(Attribute::Closure, "Zipper").unwrap();
    assert_eq!(parser.parse("I don't want shoes that lack Zipper"), vec![(14, Attribute::Closure, zipper)]);
    assert_eq!(lexicon.read("I don't want shoes that lack Zipper"), Some((Attribute::Closure, zipper)));
}

// ---------------------------------------------------------------------------------------------
// NV
// ---------------------------------------------------------------------------------------------

#[test]
fn nv_counts_each_shown_item_that_violates_a_voiced_wish_once() {
    use Attribute::*;
    let items: Vec<(ItemAttrs, [f32; 2])> = vec![
        (cells(&[(Category, "Boots"), (Gender, "Women")]), [1.0, 0.0]),                     // 0 target
        (cells(&[(Category, "Shoes"), (Gender, "Women"), (Closure, "Lace up")]), [0.0, 1.0]), // 1
        (cells(&[(Category, "Boots"), (Gender, "Men")]), [0.0, 1.0]),                      // 2
        (cells(&[(Category, "Shoes"), (Gender, "Men")]), [0.0, 1.0]),                      // 3
        (cells(&[(Category, "Shoes"), (Gender, "Women"), (Closure, "Zipper")]), [0.0, 1.0]), // 4
    ];
    let w = hand_world(&items, vec![], vec![0, 1, 2, 3, 4]);
    let env = hand_env(&w, Pool::Test, RewardConfig::default());
    let mut ep = env.start(&SessionSpec { target: 0, seed: 5 });
    let boots = Schema::reference().value_index(Category, "Boots");
    let women = Schema::reference().value_index(Gender, "Women");
    assert_eq!((ep.user.desires.get(Category), ep.user.desires.get(Gender)), (boots, women));
    // (action, expected shown, attribute named, NV)
    let plan = [
        // Shoes: violates Category, not yet voiced.
        (ask(&[(Category, "Shoes"), (Gender, "Women"), (Closure, "Lace up")]), 1, Some(Category), false),
        // Men's boots: violates Gender only; Category (voiced) holds.
        (ask(&[(Category, "Boots"), (Gender, "Men")]), 2, Some(Gender), false),
        // Men's shoes: violates both voiced wishes, counts once.
        (ask(&[(Category, "Shoes"), (Gender, "Men")]), 3, None, true),
        // Women's shoes: violates the voiced Category.
        (ask(&[(Category, "Shoes"), (Closure, "Zipper")]), 4, Some(Category), true),
        // The target.
        (ask(&[(Category, "Boots"), (Gender, "Women")]), 0, None, false),
    ];
    for (k, (action, shown, named, nv)) in plan.iter().enumerate() {
        let turn = ep.step(*action).unwrap().clone();
        assert_eq!(turn.observation.shown, *shown, "turn {}", k + 1);
        assert_eq!(turn.violates_earlier_request, *nv, "turn {}", k + 1);
        if let (Some(a), Feedback::Missing { attribute, .. }) = (named, turn.feedback) {
            assert_eq!(attribute, *a, "turn {}", k + 1);
        }
    }
    let t = ep.into_transcript();
    assert!(t.success);
    assert_eq!(t.success_turn(), Some(5));
    let outcome = SessionOutcome::of(&t);
    assert_eq!(outcome.violations, 2);
    let m = Metrics::of_transcripts(&[t.clone(), t], 50);
    assert_eq!((m.nv.mean, m.nv.se, m.ni.mean, m.sr10), (2.0, 0.0, 5.0, 1.0));
}

// ---------------------------------------------------------------------------------------------
// Regressions of bugs found while writing these tests
// ---------------------------------------------------------------------------------------------

/// A catalog of two items once had an empty test split, and sampling a target from it panicked.
/// Now each split keeps an item whenever there are two, and a one-item catalog is refused.
#[test]
fn tiny_catalogs_split_or_are_refused() {
    let w = world(2, 1);
    let env = Environment::with_truth(w, Pool::Test);
    assert_eq!(env.index.len(), 1);
    let ts = evaluate(&env, OraclePolicy::default, 3, 1, 1);
    assert!(ts.iter().all(|t| t.success));
    let one = WorldConfig { catalog: GeneratorConfig { items: 1, seed: 1 }, ..WorldConfig::default() };
    assert!(matches!(World::build(&one), Err(CatalogError::TooSmall { items: 1 })));
}

/// After a closing quote only a separator, a line end or the end of the text may follow; a lone
/// CR once slipped through and glued what followed onto the field.
#[test]
fn text_after_a_closing_quote_and_a_lone_cr_is_an_error() {
    let result = csv::parse_records("\"a\"\rb,c\n");
    assert!(result.is_err(), "{result:?}");
    assert_eq!(csv::parse_records("\"a\"\r\nb,c\n").map(|r| r.len()).ok(), Some(2));
}
