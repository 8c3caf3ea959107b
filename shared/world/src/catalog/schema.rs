//! The six attributes the recommender acts on, their vocabularies, and the multi-discrete action.
//!
//! Attribute cells are sets: an item holds a [`ValueSet`] per attribute (a bitmask over the
//! vocabulary, possibly empty, possibly several values as in the real "Round Toe;Closed Toe").
//!
//! Empty cells and the action space: every action head has one more slot than its vocabulary.
//! Slot 0 is "no preference" ([`Action::ANY`]): the recommender does not constrain that attribute,
//! and retrieval ignores it. Slot `v + 1` asks for value `v`. An item whose cell is empty never
//! matches a requested value, and a user whose target has an empty cell has no wish for that
//! attribute (so never mentions it); "no preference" is then the right choice for it.

use serde::{Deserialize, Serialize};

/// Number of attributes the recommender acts on.
pub const NUM_ATTRS: usize = 6;

/// Most values one attribute may hold (a [`ValueSet`] is a `u64` bitmask).
pub const MAX_VALUES: usize = 64;

/// One of the six UT-Zappos50K attributes, in the order of action heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Attribute {
    Category,
    SubCategory,
    HeelHeight,
    Closure,
    Gender,
    ToeStyle,
}

impl Attribute {
    pub const ALL: [Attribute; NUM_ATTRS] = [
        Attribute::Category,
        Attribute::SubCategory,
        Attribute::HeelHeight,
        Attribute::Closure,
        Attribute::Gender,
        Attribute::ToeStyle,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Option<Attribute> {
        Self::ALL.get(i).copied()
    }

    /// The column name in `meta-data.csv`.
    pub fn column(self) -> &'static str {
        match self {
            Attribute::Category => "Category",
            Attribute::SubCategory => "SubCategory",
            Attribute::HeelHeight => "HeelHeight",
            Attribute::Closure => "Closure",
            Attribute::Gender => "Gender",
            Attribute::ToeStyle => "ToeStyle",
        }
    }
}

/// A set of value indices of one attribute (bit `v` set = value `v` present).
pub type ValueSet = u64;

/// An item's attribute cells, one [`ValueSet`] per attribute.
// `repr(transparent)` and `Pod`: a world file stores the table of these as raw words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
pub struct ItemAttrs(pub [ValueSet; NUM_ATTRS]);

impl ItemAttrs {
    pub fn has(&self, attr: Attribute, value: u8) -> bool {
        value < MAX_VALUES as u8 && self.0[attr.index()] & (1u64 << value) != 0
    }

    pub fn set(&self, attr: Attribute) -> ValueSet {
        self.0[attr.index()]
    }

    pub fn insert(&mut self, attr: Attribute, value: u8) {
        self.0[attr.index()] |= 1u64 << value;
    }

    /// The values of one cell, in vocabulary order.
    pub fn values(&self, attr: Attribute) -> impl Iterator<Item = u8> {
        let mut bits = self.0[attr.index()];
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let v = bits.trailing_zeros() as u8;
            bits &= bits - 1;
            Some(v)
        })
    }

    /// ‖attr(a) − attr(b)‖₀: the number of attributes whose cells differ.
    pub fn l0_distance(&self, other: &ItemAttrs) -> u32 {
        self.0.iter().zip(other.0.iter()).filter(|(a, b)| a != b).count() as u32
    }
}

/// A multi-discrete action: one slot per attribute, 0 = no preference, `v + 1` = value `v`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Action(pub [u8; NUM_ATTRS]);

impl Action {
    /// The "no preference" slot of every head.
    pub const ANY: u8 = 0;

    /// The value this action asks for on `attr`, if any.
    pub fn value(&self, attr: Attribute) -> Option<u8> {
        match self.0[attr.index()] {
            Self::ANY => None,
            slot => Some(slot - 1),
        }
    }

    pub fn with_value(mut self, attr: Attribute, value: Option<u8>) -> Action {
        self.0[attr.index()] = value.map_or(Self::ANY, |v| v + 1);
        self
    }
}

/// The vocabulary of each attribute. The reference schema is UT-Zappos50K's; a loaded catalog may
/// extend it with values the reference does not name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    pub values: [Vec<String>; NUM_ATTRS],
}

impl Schema {
    /// UT-Zappos50K's vocabularies (see `catalog::reference`).
    pub fn reference() -> Schema {
        let owned = |vals: &[&str]| vals.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Schema {
            values: [
                owned(&super::reference::CATEGORIES.iter().map(|(n, _)| *n).collect::<Vec<_>>()),
                owned(&super::reference::SUBCATEGORIES.iter().map(|(n, _, _)| *n).collect::<Vec<_>>()),
                owned(super::reference::HEEL_HEIGHTS),
                owned(super::reference::CLOSURES),
                owned(super::reference::GENDERS),
                owned(super::reference::TOE_STYLES),
            ],
        }
    }

    pub fn num_values(&self, attr: Attribute) -> usize {
        self.values[attr.index()].len()
    }

    pub fn value_name(&self, attr: Attribute, value: u8) -> &str {
        self.values[attr.index()].get(value as usize).map_or("?", |s| s.as_str())
    }

    pub fn value_index(&self, attr: Attribute, name: &str) -> Option<u8> {
        self.values[attr.index()].iter().position(|v| v == name).map(|i| i as u8)
    }

    /// Sizes of the action heads: each vocabulary plus the "no preference" slot.
    pub fn head_sizes(&self) -> [usize; NUM_ATTRS] {
        let mut out = [0; NUM_ATTRS];
        for a in Attribute::ALL {
            out[a.index()] = self.num_values(a) + 1;
        }
        out
    }

    /// Total number of (attribute, value) pairs.
    pub fn total_values(&self) -> usize {
        self.values.iter().map(Vec::len).sum()
    }

    /// Offset of each attribute's first value in a flat (attribute, value) numbering.
    pub fn value_offsets(&self) -> [usize; NUM_ATTRS] {
        let mut out = [0; NUM_ATTRS];
        let mut acc = 0;
        for a in Attribute::ALL {
            out[a.index()] = acc;
            acc += self.num_values(a);
        }
        out
    }

    /// Renders an item's cells as `meta-data.csv` does (`;`-separated, empty when empty).
    pub fn render_cell(&self, attrs: &ItemAttrs, attr: Attribute) -> String {
        attrs.values(attr).map(|v| self.value_name(attr, v)).collect::<Vec<_>>().join(";")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_schema_has_the_real_vocabulary_sizes() {
        let s = Schema::reference();
        assert_eq!(s.num_values(Attribute::Category), 4);
        assert_eq!(s.num_values(Attribute::SubCategory), 21);
        assert_eq!(s.num_values(Attribute::HeelHeight), 7);
        assert_eq!(s.num_values(Attribute::Closure), 19);
        assert_eq!(s.num_values(Attribute::Gender), 4);
        assert_eq!(s.num_values(Attribute::ToeStyle), 19);
        assert_eq!(s.head_sizes(), [5, 22, 8, 20, 5, 20]);
    }

    #[test]
    fn action_slots_round_trip() {
        let a = Action::default().with_value(Attribute::Gender, Some(3));
        assert_eq!(a.value(Attribute::Gender), Some(3));
        assert_eq!(a.value(Attribute::Category), None);
    }

    #[test]
    fn value_sets_iterate_in_order() {
        let mut x = ItemAttrs::default();
        x.insert(Attribute::ToeStyle, 5);
        x.insert(Attribute::ToeStyle, 1);
        assert_eq!(x.values(Attribute::ToeStyle).collect::<Vec<_>>(), vec![1, 5]);
        assert!(x.has(Attribute::ToeStyle, 5));
        assert!(!x.has(Attribute::ToeStyle, 2));
    }
}
