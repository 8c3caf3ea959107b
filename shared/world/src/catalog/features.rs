//! Visual features standing in for ResNet embeddings (there are no images here).
//!
//! Each (attribute, value) pair has a fixed random unit embedding; an item's feature is the
//! normalised sum of its values' embeddings plus item-level Gaussian noise, normalised again. Visual
//! similarity therefore tracks attribute similarity without giving attributes away: the noise level
//! sets how well AttrNet can read attributes back (see docs/simulator.md for the calibration).
//! Features are unit vectors, so ‖v(a) − v(b)‖₂ lies in [0, 2] and the reward's visual term is on
//! the same scale as its attribute term.
//!
//! Real features load from a CSV file: a header `cid,f0,f1,…`, then one row per item, the CID and
//! `dim` numbers. Every catalog CID must be present; rows for unknown CIDs are ignored; a CID may
//! appear once. Loaded rows are scaled to unit norm (raw ResNet features have norms in the tens,
//! which would swamp the reward's attribute term).

use super::csv::{parse_records, CatalogError};
use super::schema::Attribute;
use super::Catalog;
use crate::rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// How to synthesise visual features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FeatureConfig {
    /// Feature dimension (a ResNet-50 pooled feature would be 2,048; 64 keeps training cheap).
    pub dim: usize,
    /// Norm of the item-level noise relative to the unit attribute signal (dimensionless).
    pub noise: f32,
    /// Seed of the value embeddings and of the noise.
    pub seed: u64,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig { dim: 64, noise: 0.6, seed: 2022 }
    }
}

/// One unit-norm feature vector per catalog item, row-major.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisualFeatures {
    pub dim: usize,
    pub data: crate::mapped::Table<f32>,
}

impl VisualFeatures {
    /// Synthesises features for every item of `catalog`.
    pub fn synthesize(catalog: &Catalog, cfg: &FeatureConfig) -> VisualFeatures {
        let dim = cfg.dim.max(1);
        let mut r = rng::rng(rng::derive(cfg.seed, rng::stream::FEATURES));
        let mut gauss = |n: usize| -> Vec<f32> { (0..n).map(|_| StandardNormal.sample(&mut r)).collect() };
        let embeddings: Vec<Vec<Vec<f32>>> = Attribute::ALL
            .iter()
            .map(|a| {
                (0..catalog.schema.num_values(*a))
                    .map(|_| {
                        let mut e = gauss(dim);
                        normalize(&mut e);
                        e
                    })
                    .collect()
            })
            .collect();
        let mut data = Vec::with_capacity(catalog.len() * dim);
        for item in &catalog.items {
            let mut f = vec![0f32; dim];
            for a in Attribute::ALL {
                for v in item.attrs.values(a) {
                    for (x, e) in f.iter_mut().zip(&embeddings[a.index()][v as usize]) {
                        *x += e;
                    }
                }
            }
            normalize(&mut f);
            let scale = cfg.noise / (dim as f32).sqrt();
            for (x, n) in f.iter_mut().zip(gauss(dim)) {
                *x += scale * n;
            }
            normalize(&mut f);
            data.extend_from_slice(&f);
        }
        VisualFeatures { dim, data: data.into() }
    }

    /// Loads per-item features from a CSV file (see the module docs).
    pub fn load(path: &Path, catalog: &Catalog) -> Result<VisualFeatures, CatalogError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| CatalogError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text, catalog)
    }

    pub fn parse(text: &str, catalog: &Catalog) -> Result<VisualFeatures, CatalogError> {
        let records = parse_records(text)?;
        let (header, rows) = records.split_first().ok_or(CatalogError::Empty)?;
        let dim = header.fields.len().saturating_sub(1);
        if dim == 0 {
            return Err(CatalogError::Malformed {
                line: header.line,
                column: "f0".into(),
                reason: "the header names no feature columns".into(),
            });
        }
        let mut by_cid: HashMap<&str, Vec<f32>> = HashMap::new();
        for row in rows {
            if row.fields.len() != dim + 1 {
                return Err(CatalogError::Malformed {
                    line: row.line,
                    column: format!("{}", row.fields.len().min(dim + 1) + 1),
                    reason: format!("expected {} fields, found {}", dim + 1, row.fields.len()),
                });
            }
            let mut v = Vec::with_capacity(dim);
            for (j, cell) in row.fields[1..].iter().enumerate() {
                let x: f32 = cell.trim().parse().ok().filter(|x: &f32| x.is_finite()).ok_or_else(|| {
                    CatalogError::Malformed { line: row.line, column: format!("f{j}"), reason: format!("not a finite number: {cell:?}") }
                })?;
                v.push(x);
            }
            normalize(&mut v);
            if by_cid.insert(row.fields[0].trim(), v).is_some() {
                return Err(CatalogError::Malformed { line: row.line, column: "cid".into(), reason: format!("duplicate CID {:?}", row.fields[0].trim()) });
            }
        }
        let mut data = Vec::with_capacity(catalog.len() * dim);
        for item in &catalog.items {
            let v = by_cid.get(item.cid.as_str()).ok_or_else(|| CatalogError::MissingFeatures { cid: item.cid.clone() })?;
            data.extend_from_slice(v);
        }
        Ok(VisualFeatures { dim, data: data.into() })
    }

    /// Writes features in the file format [`VisualFeatures::load`] reads.
    pub fn write(&self, catalog: &Catalog) -> String {
        let mut out = String::from("cid");
        for j in 0..self.dim {
            out.push_str(&format!(",f{j}"));
        }
        out.push('\n');
        for (i, item) in catalog.items.iter().enumerate() {
            out.push_str(&item.cid);
            for x in self.get(i as u32) {
                out.push_str(&format!(",{x}"));
            }
            out.push('\n');
        }
        out
    }

    pub fn get(&self, id: u32) -> &[f32] {
        let start = id as usize * self.dim;
        &self.data[start..start + self.dim]
    }

    /// ‖v(a) − v(b)‖₂.
    pub fn distance(&self, a: u32, b: u32) -> f32 {
        self.get(a).iter().zip(self.get(b)).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
    }
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{generate, GeneratorConfig};

    #[test]
    fn features_are_unit_and_track_attribute_similarity() {
        let cat = generate(&GeneratorConfig { items: 600, seed: 5 });
        let f = VisualFeatures::synthesize(&cat, &FeatureConfig::default());
        for i in 0..cat.len() as u32 {
            let n: f32 = f.get(i).iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-4);
        }
        // Mean distance between items sharing every cell is below that of items sharing none.
        let (mut same, mut ns, mut diff, mut nd) = (0.0, 0, 0.0, 0);
        for i in 0..200u32 {
            for j in (i + 1)..200u32 {
                let l0 = cat.attrs(i).l0_distance(cat.attrs(j));
                if l0 <= 1 {
                    same += f.distance(i, j);
                    ns += 1;
                } else if l0 >= 5 {
                    diff += f.distance(i, j);
                    nd += 1;
                }
            }
        }
        assert!(ns > 0 && nd > 0);
        assert!(same / ns as f32 + 0.2 < diff / nd as f32);
    }

    #[test]
    fn feature_files_round_trip_and_bad_cells_name_their_place() {
        let cat = generate(&GeneratorConfig { items: 20, seed: 5 });
        let f = VisualFeatures::synthesize(&cat, &FeatureConfig { dim: 4, ..Default::default() });
        let back = VisualFeatures::parse(&f.write(&cat), &cat).unwrap();
        assert_eq!(back.dim, 4);
        for (a, b) in back.data.iter().zip(&f.data) {
            assert!((a - b).abs() < 1e-6);
        }
        let mut lines: Vec<String> = f.write(&cat).lines().map(String::from).collect();
        lines[2] = lines[2].replacen(',', ",abc,", 1).replacen(",abc,", ",abc", 0);
        let mut cells: Vec<&str> = lines[2].split(',').collect();
        cells.remove(2);
        lines[2] = cells.join(",");
        let bad = lines.join("\n");
        let err = VisualFeatures::parse(&bad, &cat).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("f0"), "{err}");
    }
}
