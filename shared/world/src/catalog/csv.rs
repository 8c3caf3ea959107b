//! The real UT-Zappos50K `meta-data.csv` format: a header row, RFC 4180 quoting, one row per image,
//! `;`-separated values inside a cell, empty cells allowed. Columns the recommender does not use
//! (Insole, Material) are read past.
//!
//! Every problem is a [`CatalogError`] naming the line and the column; nothing panics on bad input.

use super::schema::{Attribute, ItemAttrs, Schema, MAX_VALUES};
use super::{Catalog, Item, Split};
use std::collections::HashSet;
use std::path::Path;

/// Errors at the catalog boundary (loading metadata and feature files).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("line {line}, column {column}: {reason}")]
    Malformed { line: usize, column: String, reason: String },
    #[error("the catalog is empty")]
    Empty,
    #[error("the feature file has no row for catalog item {cid}")]
    MissingFeatures { cid: String },
    #[error("a catalog of {items} items is too small to split into train and test")]
    TooSmall { items: usize },
}

fn malformed(line: usize, column: impl Into<String>, reason: impl Into<String>) -> CatalogError {
    CatalogError::Malformed { line, column: column.into(), reason: reason.into() }
}

/// Header of the real file.
pub const HEADER: [&str; 9] =
    ["CID", "Category", "SubCategory", "HeelHeight", "Insole", "Closure", "Gender", "Material", "ToeStyle"];

/// One parsed row: the line it starts on and its fields.
#[derive(Debug, PartialEq)]
pub struct Record {
    pub line: usize,
    pub fields: Vec<String>,
}

/// Splits CSV text into records (RFC 4180: quoted fields may hold commas, quotes as `""`, newlines).
/// Blank lines are skipped.
pub fn parse_records(text: &str) -> Result<Vec<Record>, CatalogError> {
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted_field = false;
        loop {
            let Some(c) = chars.next() else {
                fields.push(std::mem::take(&mut field));
                break;
            };
            match c {
                '"' if field.is_empty() && !quoted_field => {
                    quoted_field = true;
                    let quote_line = line;
                    loop {
                        match chars.next() {
                            None => {
                                return Err(malformed(
                                    quote_line,
                                    format!("{}", fields.len() + 1),
                                    "unterminated quoted field",
                                ))
                            }
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                field.push('"');
                            }
                            Some('"') => break,
                            Some(ch) => {
                                if ch == '\n' {
                                    line += 1;
                                }
                                field.push(ch);
                            }
                        }
                    }
                    if chars.peek() == Some(&'\r') {
                        // Only as part of a CRLF line end: a lone CR would glue text onto the field.
                        chars.next();
                        if chars.peek() != Some(&'\n') {
                            return Err(malformed(line, format!("{}", fields.len() + 1), "unexpected '\\r' after a closing quote"));
                        }
                    }
                    match chars.peek() {
                        None | Some(',') | Some('\n') => {}
                        Some(other) => {
                            return Err(malformed(
                                line,
                                format!("{}", fields.len() + 1),
                                format!("unexpected {other:?} after a closing quote"),
                            ))
                        }
                    }
                }
                '"' => {
                    return Err(malformed(line, format!("{}", fields.len() + 1), "stray quote inside an unquoted field"))
                }
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    quoted_field = false;
                }
                '\r' if chars.peek() == Some(&'\n') => {}
                '\n' => {
                    fields.push(std::mem::take(&mut field));
                    line += 1;
                    break;
                }
                other => field.push(other),
            }
        }
        let blank = fields.len() == 1 && fields[0].is_empty();
        if !blank {
            records.push(Record { line: start, fields });
        }
    }
    Ok(records)
}

/// Reads a `meta-data.csv` file into a catalog split by `split_seed`.
pub fn load(path: &Path, split_seed: u64) -> Result<Catalog, CatalogError> {
    let bytes = std::fs::read(path).map_err(|source| CatalogError::Io { path: path.display().to_string(), source })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = upto.iter().filter(|b| **b == b'\n').count() + 1;
        malformed(line, "?", "the file is not valid UTF-8")
    })?;
    parse(&text, split_seed)
}

/// Parses `meta-data.csv` text. Values the reference schema does not name extend it.
pub fn parse(text: &str, split_seed: u64) -> Result<Catalog, CatalogError> {
    let records = parse_records(text.strip_prefix('\u{feff}').unwrap_or(text))?;
    let (header, rows) = records.split_first().ok_or(CatalogError::Empty)?;
    let column_of = |name: &str| header.fields.iter().position(|f| f.trim() == name);
    let cid_col = column_of("CID").ok_or_else(|| malformed(header.line, "CID", "the header has no CID column"))?;
    let mut attr_cols = [0usize; 6];
    for a in Attribute::ALL {
        attr_cols[a.index()] = column_of(a.column())
            .ok_or_else(|| malformed(header.line, a.column(), "the header lacks this column"))?;
    }
    let mut schema = Schema::reference();
    let mut items = Vec::with_capacity(rows.len());
    let mut seen = HashSet::new();
    for row in rows {
        if row.fields.len() != header.fields.len() {
            return Err(malformed(
                row.line,
                format!("{}", row.fields.len().min(header.fields.len()) + 1),
                format!("expected {} fields, found {}", header.fields.len(), row.fields.len()),
            ));
        }
        let cid = row.fields[cid_col].trim();
        if cid.is_empty() {
            return Err(malformed(row.line, "CID", "empty CID"));
        }
        if !seen.insert(cid.to_string()) {
            return Err(malformed(row.line, "CID", format!("duplicate CID {cid:?}")));
        }
        let mut attrs = ItemAttrs::default();
        for a in Attribute::ALL {
            let cell = &row.fields[attr_cols[a.index()]];
            for raw in cell.split(';') {
                let name = raw.trim();
                if name.is_empty() {
                    continue;
                }
                let v = match schema.value_index(a, name) {
                    Some(v) => v,
                    None if schema.num_values(a) < MAX_VALUES => {
                        schema.values[a.index()].push(name.to_string());
                        (schema.num_values(a) - 1) as u8
                    }
                    None => {
                        return Err(malformed(row.line, a.column(), format!("more than {MAX_VALUES} distinct values")))
                    }
                };
                attrs.insert(a, v);
            }
            if matches!(a, Attribute::Category | Attribute::SubCategory) && attrs.set(a) == 0 {
                return Err(malformed(row.line, a.column(), "Category and SubCategory must be filled"));
            }
        }
        items.push(Item { cid: cid.to_string(), attrs });
    }
    if items.is_empty() {
        return Err(CatalogError::Empty);
    }
    let split = Split::by_seed(items.len(), split_seed);
    Ok(Catalog { schema, items, split })
}

/// Writes a catalog in the real format (Insole and Material left empty).
pub fn write(catalog: &Catalog) -> String {
    let mut out = HEADER.join(",");
    out.push('\n');
    for item in &catalog.items {
        let cell = |a: Attribute| quote(&catalog.schema.render_cell(&item.attrs, a));
        let row = [
            quote(&item.cid),
            cell(Attribute::Category),
            cell(Attribute::SubCategory),
            cell(Attribute::HeelHeight),
            String::new(),
            cell(Attribute::Closure),
            cell(Attribute::Gender),
            String::new(),
            cell(Attribute::ToeStyle),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_handle_quotes_commas_and_newlines() {
        let r = parse_records("a,\"b,\"\"c\"\"\",d\r\n\n\"x\ny\",z,\n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].fields, vec!["a", "b,\"c\"", "d"]);
        assert_eq!(r[1].line, 3);
        assert_eq!(r[1].fields, vec!["x\ny", "z", ""]);
    }

    #[test]
    fn unterminated_quote_names_its_line() {
        let e = parse_records("a,b\nc,\"d\n").unwrap_err();
        assert!(matches!(e, CatalogError::Malformed { line: 2, .. }), "{e}");
    }
}
