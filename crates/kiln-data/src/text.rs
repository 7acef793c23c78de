//! Text-classification and regression datasets: folder-per-class directories (the BBC News
//! layout), CSV/TSV/JSONL files with named columns, and the GLUE TSV layouts.
//!
//! Every reader decodes text strictly (UTF-8, or the encoding the user declares) and treats a
//! row it cannot use (missing column, unknown or unparsable label, undecodable bytes) the same
//! way: an error naming file and row, or, with [`OnBadRow::Skip`], a [`SkippedRow`] counted in
//! the dataset.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use encoding_rs::Encoding;

use crate::error::{DataError, Result};

/// What a model is asked to predict for one example.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Index into [`TaskKind::Classification`]'s labels.
    Class(usize),
    /// A real-valued score (STS-B).
    Score(f32),
    /// Indices into [`TaskKind::MultiLabel`]'s labels, ascending: every label that applies
    /// (none, one or several).
    Labels(Vec<usize>),
}

impl Target {
    /// The class index a classification loss or metric reads (a score is truncated; a label
    /// set gives its first label, 0 when empty: what a stratified split sorts it by).
    pub fn class_index(&self) -> usize {
        match self {
            Target::Class(c) => *c,
            Target::Score(s) => *s as usize,
            Target::Labels(labels) => labels.first().copied().unwrap_or(0),
        }
    }

    /// The value a regression loss or metric reads.
    pub fn score(&self) -> f32 {
        match self {
            Target::Score(s) => *s,
            Target::Class(c) => *c as f32,
            Target::Labels(labels) => labels.len() as f32,
        }
    }

    /// Whether label `index` applies: one-hot for a class, the set for multi-label.
    pub fn has_label(&self, index: usize) -> bool {
        match self {
            Target::Class(c) => *c == index,
            Target::Labels(labels) => labels.binary_search(&index).is_ok(),
            Target::Score(_) => false,
        }
    }
}

/// One text (or pair of texts) with its target.
#[derive(Debug, Clone, PartialEq)]
pub struct TextExample {
    /// The text.
    pub text: String,
    /// Second text of a sentence pair.
    pub pair: Option<String>,
    /// Its class or value.
    pub target: Target,
}

/// What a text task predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskKind {
    /// Label names, in index order.
    Classification {
        /// Class names, in index order.
        labels: Vec<String>,
    },
    /// A real number.
    Regression,
    /// Any number of labels per example (sigmoid outputs, one per label).
    MultiLabel {
        /// Label names, in index order.
        labels: Vec<String>,
    },
}

impl TaskKind {
    /// The label names of a classification or multi-label task (none for regression).
    pub fn labels(&self) -> &[String] {
        match self {
            TaskKind::Classification { labels } | TaskKind::MultiLabel { labels } => labels,
            TaskKind::Regression => &[],
        }
    }
}

/// A row (or document) a reader left out because the user asked it to skip bad rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// Where it was: `file, row N` or the document's path.
    pub location: String,
    /// Why it was left out.
    pub reason: String,
}

/// A text data set as read, before it is split.
#[derive(Debug, Clone)]
pub struct TextDataset {
    /// The file or folder it was read from.
    pub source: PathBuf,
    /// What it predicts.
    pub task: TaskKind,
    /// Every usable example.
    pub examples: Vec<TextExample>,
    /// What was left out and why.
    pub skipped: Vec<SkippedRow>,
}

impl TextDataset {
    /// Examples in the set.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether the set holds no example.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Classes of a classification set (labels of a multi-label one); `None` for regression.
    pub fn num_classes(&self) -> Option<usize> {
        match &self.task {
            TaskKind::Classification { labels } | TaskKind::MultiLabel { labels } => {
                Some(labels.len())
            }
            TaskKind::Regression => None,
        }
    }

    /// Class index of every example, what a stratified split sorts by (a multi-label example's
    /// first label); regression datasets have none.
    pub fn classes(&self) -> Option<Vec<usize>> {
        self.examples
            .iter()
            .map(|e| match e.target {
                Target::Score(_) => None,
                _ => Some(e.target.class_index()),
            })
            .collect()
    }
}

/// What a reader does with a row it cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadRow {
    /// Stop with an error naming the file and row.
    #[default]
    Fail,
    /// Leave it out, count it and say why.
    Skip,
}

/// Options every reader takes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// What to do with a bad row.
    pub on_bad_row: OnBadRow,
    /// Encoding of files that are not UTF-8, e.g. `windows-1252`; `None` means strict UTF-8.
    pub encoding: Option<&'static Encoding>,
}

impl ReadOptions {
    /// Looks an encoding up by its WHATWG label (`latin1`, `windows-1252`, `utf-16le`, ...).
    pub fn with_encoding_label(mut self, label: &str) -> Result<Self> {
        let encoding = Encoding::for_label(label.as_bytes()).ok_or_else(|| {
            DataError::InvalidInput(format!(
                "unknown text encoding `{label}` (try utf-8, latin1, windows-1252, utf-16le)"
            ))
        })?;
        self.encoding = Some(encoding);
        Ok(self)
    }

    pub(crate) fn decode(&self, bytes: &[u8]) -> std::result::Result<String, String> {
        match self.encoding {
            None => {
                let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
                String::from_utf8(bytes.to_vec()).map_err(|e| {
                    format!(
                        "not valid UTF-8 at byte {} (declare the file's encoding, e.g. latin1)",
                        e.utf8_error().valid_up_to()
                    )
                })
            }
            Some(encoding) => encoding
                .decode_without_bom_handling_and_without_replacement(bytes)
                .map(|text| text.into_owned())
                .ok_or_else(|| format!("not valid {}", encoding.name())),
        }
    }
}

/// Collects rows, applying the bad-row policy in one place.
struct RowSink {
    path: PathBuf,
    options: ReadOptions,
    skipped: Vec<SkippedRow>,
}

impl RowSink {
    fn new(path: &Path, options: ReadOptions) -> Self {
        Self {
            path: path.to_path_buf(),
            options,
            skipped: Vec::new(),
        }
    }

    /// `Ok(Some(value))` for a good row, `Ok(None)` for a skipped one, `Err` when failing.
    fn accept<T>(
        &mut self,
        row: usize,
        value: std::result::Result<T, String>,
    ) -> Result<Option<T>> {
        match value {
            Ok(value) => Ok(Some(value)),
            Err(message) => match self.options.on_bad_row {
                OnBadRow::Fail => Err(DataError::Row {
                    path: self.path.clone(),
                    row,
                    message,
                }),
                OnBadRow::Skip => {
                    self.skipped.push(SkippedRow {
                        location: format!("row {row}"),
                        reason: message,
                    });
                    Ok(None)
                }
            },
        }
    }
}

pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|cause| DataError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|cause| DataError::Io {
        path: dir.to_path_buf(),
        cause,
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|cause| DataError::Io {
            path: dir.to_path_buf(),
            cause,
        })?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with('.') {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

/// Reads a directory with one subdirectory per class and one text file per document
/// (`bbcnews/data/{business,...}/NNN.txt`). Classes are the subdirectory names, sorted.
pub fn read_class_folders(dir: &Path, options: ReadOptions) -> Result<TextDataset> {
    read_class_dirs(dir, options, None)
}

/// Reads held-out documents laid out as [`read_class_folders`] reads them, labelled with a
/// training set's class names `labels` (in their order): a folder may hold any of the classes,
/// and a folder of a class the training set lacks is an error naming it.
pub fn read_class_folders_labelled(
    dir: &Path,
    options: ReadOptions,
    labels: &[String],
) -> Result<TextDataset> {
    read_class_dirs(dir, options, Some(labels))
}

fn read_class_dirs(
    dir: &Path,
    options: ReadOptions,
    known: Option<&[String]>,
) -> Result<TextDataset> {
    let class_dirs: Vec<PathBuf> = sorted_entries(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if class_dirs.is_empty() || (known.is_none() && class_dirs.len() < 2) {
        return Err(DataError::Layout {
            path: dir.to_path_buf(),
            message: format!(
                "expected one subdirectory per class (at least two), found {}",
                class_dirs.len()
            ),
        });
    }
    let names: Vec<String> = class_dirs
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let (labels, classes) = match known {
        None => (names.clone(), (0..names.len()).collect::<Vec<_>>()),
        Some(known) => {
            let unknown: Vec<&str> = names
                .iter()
                .filter(|n| !known.contains(n))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                return Err(DataError::Layout {
                    path: dir.to_path_buf(),
                    message: format!(
                        "class folders the training data does not have: {} (its classes: {})",
                        unknown.join(", "),
                        known.join(", ")
                    ),
                });
            }
            let classes = names
                .iter()
                .map(|n| known.iter().position(|k| k == n).unwrap_or_default())
                .collect();
            (known.to_vec(), classes)
        }
    };
    let mut examples = Vec::new();
    let mut skipped = Vec::new();
    for (&class, class_dir) in classes.iter().zip(&class_dirs) {
        for file in sorted_entries(class_dir)?
            .into_iter()
            .filter(|p| p.is_file())
        {
            let decoded = options.decode(&read_bytes(&file)?).and_then(|text| {
                let text = text.trim().to_string();
                if text.is_empty() {
                    Err("empty document".to_string())
                } else {
                    Ok(text)
                }
            });
            match decoded {
                Ok(text) => examples.push(TextExample {
                    text,
                    pair: None,
                    target: Target::Class(class),
                }),
                Err(message) if options.on_bad_row == OnBadRow::Skip => skipped.push(SkippedRow {
                    location: file.display().to_string(),
                    reason: message,
                }),
                Err(message) => {
                    return Err(DataError::Document {
                        path: file,
                        message,
                    });
                }
            }
        }
    }
    if known.is_none() {
        // Training data: every class needs examples, or it is a class the model never sees.
        for (class, name) in labels.iter().enumerate() {
            if !examples
                .iter()
                .any(|e: &TextExample| e.target == Target::Class(class))
            {
                return Err(DataError::Layout {
                    path: dir.join(name),
                    message: "a class folder without usable documents".into(),
                });
            }
        }
    }
    finish(dir, TaskKind::Classification { labels }, examples, skipped)
}

fn finish(
    source: &Path,
    task: TaskKind,
    examples: Vec<TextExample>,
    skipped: Vec<SkippedRow>,
) -> Result<TextDataset> {
    if examples.is_empty() {
        return Err(DataError::Layout {
            path: source.to_path_buf(),
            message: format!("no usable examples ({} rows skipped)", skipped.len()),
        });
    }
    Ok(TextDataset {
        source: source.to_path_buf(),
        task,
        examples,
        skipped,
    })
}

/// File formats of [`read_table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// Comma-separated.
    Csv,
    /// Tab-separated; quotes are ordinary characters, as in the GLUE files.
    Tsv,
    /// One JSON object per line.
    Jsonl,
}

impl TableFormat {
    /// From the extension: `.csv`, `.tsv`/`.tab`, `.jsonl`/`.ndjson`.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "csv" => Ok(TableFormat::Csv),
            "tsv" | "tab" => Ok(TableFormat::Tsv),
            "jsonl" | "ndjson" => Ok(TableFormat::Jsonl),
            _ => Err(DataError::InvalidInput(format!(
                "{}: cannot tell the format from the extension (expected .csv, .tsv or .jsonl)",
                path.display()
            ))),
        }
    }
}

/// Which columns of a table hold what.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// Column of the text.
    pub text_column: String,
    /// Column of the second text of a pair, if any.
    pub pair_column: Option<String>,
    /// Column of the label.
    pub label_column: String,
    /// Labels are real numbers (regression) rather than class names.
    pub regression: bool,
    /// Any number of labels per row (multi-label): a JSON array label, or a cell split by
    /// `label_separator`. A file whose JSONL labels are lists is multi-label without it.
    pub multi_label: bool,
    /// What splits a multi-label cell (`|` in `fire|kiln`).
    pub label_separator: Option<String>,
    /// Class names in index order; `None` takes the sorted distinct labels of the file.
    pub labels: Option<Vec<String>>,
}

impl TableSpec {
    /// Text and label columns, classification, class names from the file.
    pub fn new(text_column: &str, label_column: &str) -> Self {
        Self {
            text_column: text_column.into(),
            pair_column: None,
            label_column: label_column.into(),
            regression: false,
            multi_label: false,
            label_separator: None,
            labels: None,
        }
    }
}

/// A raw label's names as a multi-label cell holds them: a JSON array of strings (`["a", "b"]`,
/// `[]`), or the text split by `separator`; `None` when it is neither.
fn label_list(raw: &str, separator: Option<&str>) -> Option<Vec<String>> {
    if raw.starts_with('[')
        && let Ok(list) = serde_json::from_str::<Vec<String>>(raw)
    {
        return Some(list.into_iter().map(|l| l.trim().to_string()).collect());
    }
    separator.map(|sep| {
        raw.split(sep)
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// One raw row: line number and its named fields.
struct RawRow {
    line: usize,
    fields: std::result::Result<Vec<(String, String)>, String>,
}

/// Reads a CSV, TSV or JSONL file (format from the extension) with the columns `spec` names.
pub fn read_table(path: &Path, spec: &TableSpec, options: ReadOptions) -> Result<TextDataset> {
    let rows = table_rows(path, options)?;
    rows_to_dataset(path, rows, spec, options)
}

/// The raw rows of a CSV, TSV or JSONL file, the format from the extension.
fn table_rows(path: &Path, options: ReadOptions) -> Result<Vec<RawRow>> {
    match TableFormat::from_path(path)? {
        TableFormat::Csv => delimited_rows(path, b',', true, true, options),
        TableFormat::Tsv => delimited_rows(path, b'\t', false, true, options),
        TableFormat::Jsonl => jsonl_rows(path, options),
    }
}

/// The whole of a text file, decoded; an undecodable file is a bad document.
pub(crate) fn read_text(path: &Path, options: ReadOptions) -> Result<String> {
    options
        .decode(&read_bytes(path)?)
        .map_err(|message| DataError::Document {
            path: path.to_path_buf(),
            message,
        })
}

/// Rows of a delimited file; fields are named by the header, or `column 1`, `column 2`, ...
/// With a header every row must have its number of fields. A row that does not (an extra
/// field, or a quote left open that ran into the lines after it) is one bad row at its first
/// line, and reading starts again on the next line, so it never takes later rows with it.
fn delimited_rows(
    path: &Path,
    delimiter: u8,
    quoting: bool,
    has_header: bool,
    options: ReadOptions,
) -> Result<Vec<RawRow>> {
    let bytes = read_bytes(path)?;
    let reader = |from: usize, header: bool| {
        csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .quoting(quoting)
            .flexible(true)
            .has_headers(header)
            .from_reader(&bytes[from..])
    };
    let header_error = |message: String| DataError::Row {
        path: path.to_path_buf(),
        row: 1,
        message,
    };
    let (headers, mut offset) = if has_header {
        let mut first = reader(0, true);
        let headers: Vec<String> = first
            .byte_headers()
            .map_err(|e| header_error(e.to_string()))?
            .iter()
            .map(|h| options.decode(h).map(|h| h.trim().to_string()))
            .collect::<std::result::Result<_, _>>()
            .map_err(header_error)?;
        (headers, first.position().byte() as usize)
    } else {
        (Vec::new(), 0)
    };
    // The file's line number of `offset`'s line.
    let mut base_line = 1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count();
    let mut rows = Vec::new();
    'restart: while offset < bytes.len() {
        let mut records = reader(offset, false);
        let mut record = csv::ByteRecord::new();
        loop {
            let start = records.position().clone();
            let read = records.read_byte_record(&mut record);
            let line = base_line + start.line() as usize - 1;
            let end_line = base_line + records.position().line() as usize - 1;
            let spans_lines = end_line > line + 1;
            // Too few fields on one line is a missing column, which `extract` names.
            let miscounted = !headers.is_empty()
                && (record.len() > headers.len() || (spans_lines && record.len() != headers.len()));
            let fields = match read {
                Ok(false) => break 'restart,
                Ok(true) if miscounted => Err(format!(
                    "{} fields where the header has {}{}",
                    record.len(),
                    headers.len(),
                    if end_line > line + 1 {
                        format!(
                            " (a quote opened here runs on to line {}; close it or \
                                 escape it as \"\")",
                            end_line - 1
                        )
                    } else {
                        String::new()
                    }
                )),
                Ok(true) => record
                    .iter()
                    .enumerate()
                    .map(|(i, field)| {
                        let name = headers
                            .get(i)
                            .cloned()
                            .unwrap_or_else(|| format!("column {}", i + 1));
                        options.decode(field).map(|value| (name, value))
                    })
                    .collect(),
                Err(e) => Err(e.to_string()),
            };
            let bad = fields.is_err();
            rows.push(RawRow { line, fields });
            if bad && spans_lines {
                // Start again on the line after the bad row's first.
                let from = offset + start.byte() as usize;
                let next = bytes[from..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |i| from + i + 1);
                offset = next;
                base_line = line + 1;
                continue 'restart;
            }
        }
    }
    Ok(rows)
}

fn jsonl_rows(path: &Path, options: ReadOptions) -> Result<Vec<RawRow>> {
    let bytes = read_bytes(path)?;
    let mut rows = Vec::new();
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_number = index + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let fields = options.decode(line).and_then(|text| {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))?;
            let object = value.as_object().ok_or("expected a JSON object")?;
            Ok(object
                .iter()
                .map(|(key, value)| {
                    let text = match value {
                        serde_json::Value::String(s) => s.clone(),
                        // A null is no value, never the class "null".
                        serde_json::Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (key.clone(), text)
                })
                .collect())
        });
        rows.push(RawRow {
            line: line_number,
            fields,
        });
    }
    Ok(rows)
}

/// A text to label (`kiln predict`): its text or pair of texts and its id, when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRow {
    /// The input's id column, carried into the predictions.
    pub id: Option<String>,
    /// The text.
    pub text: String,
    /// Second text of a pair.
    pub pair: Option<String>,
}

/// Which columns of an unlabelled table hold what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// Column of the text.
    pub text_column: String,
    /// Column of the second text of a pair, if any.
    pub pair_column: Option<String>,
    /// Column of the id, which every row must then have; `None` carries an `id` column where a
    /// row has one.
    pub id_column: Option<String>,
}

/// Reads texts to label: a CSV/TSV/JSONL table with the columns `spec` names (any label column
/// is ignored), or a `.txt` file with one text per line (blank lines ignored).
pub fn read_inputs(
    path: &Path,
    spec: &InputSpec,
    options: ReadOptions,
) -> Result<(Vec<InputRow>, Vec<SkippedRow>)> {
    let is_text = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
    if is_text {
        let rows: Vec<InputRow> = read_text(path, options)?
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| InputRow {
                id: None,
                text: line.to_string(),
                pair: None,
            })
            .collect();
        if rows.is_empty() {
            return Err(DataError::Layout {
                path: path.to_path_buf(),
                message: "no texts (one per line)".into(),
            });
        }
        return Ok((rows, Vec::new()));
    }
    let rows = table_rows(path, options)?;
    let mut sink = RowSink::new(path, options);
    let mut inputs = Vec::new();
    for row in rows {
        let input = row.fields.and_then(|fields| {
            let id = match &spec.id_column {
                Some(column) => Some(field(&fields, column)?),
                None => field(&fields, "id").ok(),
            };
            let text = field(&fields, &spec.text_column)?;
            if text.trim().is_empty() {
                return Err(format!("empty text in column `{}`", spec.text_column));
            }
            let pair = spec
                .pair_column
                .as_deref()
                .map(|column| field(&fields, column))
                .transpose()?;
            Ok(InputRow { id, text, pair })
        });
        if let Some(input) = sink.accept(row.line, input)? {
            inputs.push(input);
        }
    }
    if inputs.is_empty() {
        return Err(DataError::Layout {
            path: path.to_path_buf(),
            message: format!("no usable rows ({} skipped)", sink.skipped.len()),
        });
    }
    Ok((inputs, sink.skipped))
}

/// The value of `column` in a row, or an error listing the row's columns.
fn field(fields: &[(String, String)], column: &str) -> std::result::Result<String, String> {
    fields
        .iter()
        .find(|(name, _)| name == column)
        .map(|(_, value)| value.clone())
        .ok_or_else(|| {
            let found: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
            format!(
                "missing column `{column}` (the row has: {})",
                found.join(", ")
            )
        })
}

/// A row's fields pulled out by column name: (text, pair, raw label).
type Extracted = (String, Option<String>, String);

fn extract(
    fields: &[(String, String)],
    spec: &TableSpec,
) -> std::result::Result<Extracted, String> {
    let get = |column: &str| field(fields, column);
    let text = get(&spec.text_column)?;
    if text.trim().is_empty() {
        return Err(format!("empty text in column `{}`", spec.text_column));
    }
    let pair = spec.pair_column.as_deref().map(get).transpose()?;
    let label = get(&spec.label_column)?.trim().to_string();
    // `[]` is a multi-label row with no label; an empty cell is a missing label.
    if label.is_empty() {
        return Err(format!(
            "empty or null label in column `{}`",
            spec.label_column
        ));
    }
    Ok((text, pair, label))
}

/// A label that is not a whole number, when every label is a number: such a file holds scores,
/// not class names. Whole numbers (`0`/`1`, star ratings) stay classes.
fn looks_like_regression(labels: &[String]) -> Option<&str> {
    let numbers: Vec<f64> = labels.iter().map_while(|l| l.parse().ok()).collect();
    if numbers.len() != labels.len() || labels.is_empty() {
        return None;
    }
    labels
        .iter()
        .zip(&numbers)
        .find(|(_, v)| v.is_finite() && v.fract() != 0.0)
        .map(|(label, _)| label.as_str())
}

fn rows_to_dataset(
    path: &Path,
    rows: Vec<RawRow>,
    spec: &TableSpec,
    options: ReadOptions,
) -> Result<TextDataset> {
    let mut sink = RowSink::new(path, options);
    let mut good: Vec<(usize, Extracted)> = Vec::new();
    for row in rows {
        let extracted = row.fields.and_then(|fields| extract(&fields, spec));
        if let Some(value) = sink.accept(row.line, extracted)? {
            good.push((row.line, value));
        }
    }
    // Multi-label when asked for, or when a JSONL label is a list.
    let multi_label = spec.multi_label
        || (!spec.regression
            && good.iter().any(|(_, (_, _, label))| {
                label.starts_with('[') && label_list(label, None).is_some()
            }));
    let separator = spec.label_separator.as_deref();
    let task = if spec.regression {
        TaskKind::Regression
    } else if multi_label {
        let labels = match &spec.labels {
            Some(labels) => labels.clone(),
            None => good
                .iter()
                .flat_map(|(_, (_, _, label))| label_list(label, separator).unwrap_or_default())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        if labels.is_empty() {
            return Err(DataError::InvalidInput(format!(
                "{}: no row names any label",
                path.display()
            )));
        }
        TaskKind::MultiLabel { labels }
    } else {
        let labels = match &spec.labels {
            Some(labels) => labels.clone(),
            None => good
                .iter()
                .map(|(_, (_, _, label))| label.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        if spec.labels.is_some() && options.on_bad_row == OnBadRow::Fail {
            refuse_unknown_labels(path, &good, &labels)?;
        }
        if spec.labels.is_none() && labels.len() < 2 {
            return Err(DataError::InvalidInput(format!(
                "{}: one class only ({}): a classifier needs at least two (for numbers, pass \
                 --regression)",
                path.display(),
                labels.first().map_or("none", String::as_str)
            )));
        }
        if spec.labels.is_none()
            && let Some(example) = looks_like_regression(&labels)
        {
            return Err(DataError::InvalidInput(format!(
                "{}: every label is a number and some are not whole (`{example}`, {} distinct \
                 values): did you mean --regression? As classes, each value would be a class of \
                 its own",
                path.display(),
                labels.len()
            )));
        }
        TaskKind::Classification { labels }
    };
    let mut examples = Vec::with_capacity(good.len());
    for (line, (text, pair, label)) in good {
        let target = match &task {
            TaskKind::Regression => label
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .map(Target::Score)
                .ok_or_else(|| format!("label `{label}` is not a number")),
            TaskKind::Classification { labels } => labels
                .iter()
                .position(|l| *l == label)
                .map(Target::Class)
                .ok_or_else(|| {
                    format!(
                        "unknown label `{label}` (expected one of: {})",
                        labels.join(", ")
                    )
                }),
            TaskKind::MultiLabel { labels } => multi_label_target(&label, separator, labels),
        };
        if let Some(target) = sink.accept(line, target)? {
            examples.push(TextExample { text, pair, target });
        }
    }
    finish(path, task, examples, sink.skipped)
}

/// A multi-label cell's target: the indices of its labels in `labels`, or an error naming the
/// first unknown one.
fn multi_label_target(
    raw: &str,
    separator: Option<&str>,
    labels: &[String],
) -> std::result::Result<Target, String> {
    let names = label_list(raw, separator).ok_or_else(|| {
        format!("label `{raw}` is not a JSON list of labels (and no --label-separator is set)")
    })?;
    let mut indices = Vec::with_capacity(names.len());
    for name in &names {
        let index = labels.iter().position(|l| l == name).ok_or_else(|| {
            format!(
                "unknown label `{name}` (expected any of: {})",
                labels.join(", ")
            )
        })?;
        indices.push(index);
    }
    indices.sort_unstable();
    indices.dedup();
    Ok(Target::Labels(indices))
}

/// Every label of `rows` outside `labels`, with its row count, in one error: a held-out file
/// with classes the training data never had is refused as a whole, not at its first such row.
fn refuse_unknown_labels(
    path: &Path,
    rows: &[(usize, Extracted)],
    labels: &[String],
) -> Result<()> {
    let mut unknown: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for (line, (_, _, label)) in rows {
        if !labels.contains(label) {
            let entry = unknown.entry(label.as_str()).or_insert((0, *line));
            entry.0 += 1;
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = unknown
        .iter()
        .map(|(label, (rows, first))| {
            format!(
                "`{label}` ({rows} row{}, first at row {first})",
                if *rows == 1 { "" } else { "s" }
            )
        })
        .collect();
    Err(DataError::InvalidInput(format!(
        "{}: labels the training data does not have: {}; its labels are: {}",
        path.display(),
        listed.join(", "),
        labels.join(", ")
    )))
}

/// The GLUE tasks whose TSV layouts kiln reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlueTask {
    /// Stanford Sentiment Treebank, binary.
    Sst2,
    /// Corpus of Linguistic Acceptability.
    Cola,
    /// Microsoft Research Paraphrase Corpus (pairs).
    Mrpc,
    /// Recognising Textual Entailment (pairs).
    Rte,
    /// Semantic Textual Similarity Benchmark (pairs, regression).
    StsB,
}

impl std::str::FromStr for GlueTask {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_lowercase().replace(['-', '_'], "").as_str() {
            "sst2" => Ok(GlueTask::Sst2),
            "cola" => Ok(GlueTask::Cola),
            "mrpc" => Ok(GlueTask::Mrpc),
            "rte" => Ok(GlueTask::Rte),
            "stsb" => Ok(GlueTask::StsB),
            _ => Err(DataError::InvalidInput(format!(
                "unknown GLUE task `{s}` (expected sst2, cola, mrpc, rte or sts-b)"
            ))),
        }
    }
}

impl GlueTask {
    /// Column layout of the task's `train.tsv` / `dev.tsv`, as GLUE distributes them.
    fn spec(self) -> TableSpec {
        let classes = |labels: &[&str]| Some(labels.iter().map(|l| l.to_string()).collect());
        match self {
            GlueTask::Sst2 => TableSpec {
                labels: classes(&["0", "1"]),
                ..TableSpec::new("sentence", "label")
            },
            // CoLA has no header: source, label, original mark, sentence.
            GlueTask::Cola => TableSpec {
                labels: classes(&["0", "1"]),
                ..TableSpec::new("column 4", "column 2")
            },
            GlueTask::Mrpc => TableSpec {
                pair_column: Some("#2 String".into()),
                labels: classes(&["0", "1"]),
                ..TableSpec::new("#1 String", "Quality")
            },
            GlueTask::Rte => TableSpec {
                pair_column: Some("sentence2".into()),
                labels: classes(&["not_entailment", "entailment"]),
                ..TableSpec::new("sentence1", "label")
            },
            GlueTask::StsB => TableSpec {
                pair_column: Some("sentence2".into()),
                regression: true,
                ..TableSpec::new("sentence1", "score")
            },
        }
    }
}

/// Reads `dir/{split}.tsv` of a GLUE task (`split` is `train` or `dev`).
pub fn read_glue(
    dir: &Path,
    task: GlueTask,
    split: &str,
    options: ReadOptions,
) -> Result<TextDataset> {
    let path = dir.join(format!("{split}.tsv"));
    if !path.is_file() {
        return Err(DataError::Layout {
            path,
            message: format!("missing: a GLUE {task:?} directory has train.tsv and dev.tsv"),
        });
    }
    let has_header = task != GlueTask::Cola;
    let rows = delimited_rows(&path, b'\t', false, has_header, options)?;
    rows_to_dataset(&path, rows, &task.spec(), options)
}
