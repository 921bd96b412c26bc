//! The tables of the listing verbs (`list`, `image list`) as rkt prints them: the columns that
//! `--fields` names, in its order (all of them without it), a legend unless `--no-legend`, each
//! column as wide as its widest cell; and times as people read them (`--format json` keeps the
//! machine values).

use std::time::{Duration, UNIX_EPOCH};

/// One column: the `--fields` name, the legend, and the cell of a row (`full`: `--full` given).
pub struct Column<T> {
    /// Its name in `--fields`.
    pub field: &'static str,
    /// Its heading in the legend.
    pub header: &'static str,
    /// Its cell for one row.
    pub cell: fn(&T, bool) -> String,
}

/// A `--fields` value that names no column.
#[derive(Debug, thiserror::Error)]
#[error("--fields: unknown field {field:?}; the fields are {known}")]
pub struct UnknownField {
    /// The name given.
    pub field: String,
    /// The names there are, comma-separated.
    pub known: String,
}

/// The columns `fields` names, in its order; those of `default` when `fields` is empty.
pub fn select<'a, T>(
    columns: &'a [Column<T>],
    fields: &[String],
    default: &[&str],
) -> Result<Vec<&'a Column<T>>, UnknownField> {
    let default: Vec<String> = default.iter().map(|field| field.to_string()).collect();
    let fields = if fields.is_empty() { &default } else { fields };
    fields
        .iter()
        .map(|field| {
            columns
                .iter()
                .find(|column| column.field == field.trim())
                .ok_or_else(|| UnknownField {
                    field: field.clone(),
                    known: columns
                        .iter()
                        .map(|column| column.field)
                        .collect::<Vec<_>>()
                        .join(","),
                })
        })
        .collect()
}

/// The table of `rows` in `columns`, with the legend if `legend`, as lines.
pub fn render<T>(columns: &[&Column<T>], rows: &[T], full: bool, legend: bool) -> Vec<String> {
    let mut cells: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 1);
    if legend {
        cells.push(columns.iter().map(|c| c.header.to_string()).collect());
    }
    cells.extend(
        rows.iter()
            .map(|row| columns.iter().map(|c| (c.cell)(row, full)).collect()),
    );
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            cells
                .iter()
                .map(|line| line[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    cells
        .iter()
        .map(|line| {
            let padded: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            padded.join("  ").trim_end().to_string()
        })
        .collect()
}

/// Prints [`render`]'s lines.
pub fn print<T>(columns: &[&Column<T>], rows: &[T], full: bool, legend: bool) {
    for line in render(columns, rows, full, legend) {
        println!("{line}");
    }
}

/// How long ago `then` (seconds since the epoch) was, as rkt says it.
pub fn ago(then: u64) -> String {
    match crate::pod::status::now().saturating_sub(then) {
        0..=59 => "just now".to_string(),
        secs @ 60..=3599 => format!("{} minutes ago", secs / 60),
        secs @ 3600..=86399 => format!("{} hours ago", secs / 3600),
        secs => format!("{} days ago", secs / 86400),
    }
}

/// `then` (seconds since the epoch) as a date and time in UTC, as rkt's `status` shows times:
/// `2026-12-07 10:22:21 +0000 UTC`.
pub fn timestamp(then: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(then);
    let rfc3339 = humantime::format_rfc3339_seconds(time).to_string();
    format!(
        "{} +0000 UTC",
        rfc3339.trim_end_matches('Z').replacen('T', " ", 1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: [Column<(u32, &str)>; 2] = [
        Column {
            field: "id",
            header: "ID",
            cell: |row, full| match full {
                true => format!("{:08}", row.0),
                false => row.0.to_string(),
            },
        },
        Column {
            field: "name",
            header: "NAME",
            cell: |row, _| row.1.to_string(),
        },
    ];

    #[test]
    fn fields_choose_and_order_the_columns_and_widths_fit_the_cells() {
        let rows = [(7, "busybox"), (12345, "a")];
        let all = select(&COLUMNS, &[], &["id", "name"]).expect("all");
        assert_eq!(
            render(&all, &rows, false, true),
            ["ID     NAME", "7      busybox", "12345  a"]
        );
        let chosen = select(&COLUMNS, &["name".into(), "id".into()], &["id"]).expect("known");
        assert_eq!(
            render(&chosen, &rows, true, false),
            ["busybox  00000007", "a        00012345"]
        );
        let err = select(&COLUMNS, &["size".into()], &[])
            .err()
            .expect("unknown");
        assert_eq!(
            err.to_string(),
            "--fields: unknown field \"size\"; the fields are id,name"
        );
    }

    #[test]
    fn timestamps_read_as_rkt_prints_them() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(timestamp(1_796_638_941), "2026-12-07 10:22:21 +0000 UTC");
    }
}
