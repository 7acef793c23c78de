//! Plain text for language-model pretraining: a directory (searched recursively) whose `.txt`
//! files are one document each, such as the BBC News folders, or one file with a document per
//! non-empty line. Documents are kept whole so a held-out split never cuts one in two.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::split::SplitMix64;
use crate::text::{OnBadRow, ReadOptions, SkippedRow, read_bytes, read_text, sorted_entries};

/// Plain-text documents for language-model pretraining.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    /// The documents' texts.
    pub documents: Vec<String>,
    /// What was left out (with `--skip-bad-rows`) and why.
    pub skipped: Vec<SkippedRow>,
}

impl Corpus {
    /// A seeded share of the documents for held-out evaluation, the rest for training.
    pub fn split(&self, held_out: f64, seed: u64) -> (Vec<&str>, Vec<&str>) {
        let mut order: Vec<usize> = (0..self.documents.len()).collect();
        SplitMix64::new(seed).shuffle(&mut order);
        // At least one held out when asked, and at least one left to train on.
        let most = self.documents.len().saturating_sub(1);
        let held = ((self.documents.len() as f64 * held_out).round() as usize)
            .max(usize::from(held_out > 0.0))
            .min(most);
        let pick = |indices: &[usize]| {
            indices
                .iter()
                .map(|&i| self.documents[i].as_str())
                .collect()
        };
        (pick(&order[held..]), pick(&order[..held]))
    }
}

/// The documents in `path`: every `.txt` file below a folder (one document each), or the non-empty
/// lines of one file (one document each).
pub fn read_corpus(path: &Path, options: ReadOptions) -> Result<Corpus> {
    let mut corpus = Corpus::default();
    if path.is_file() {
        corpus.documents = read_text(path, options)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
    } else if path.is_dir() {
        let mut files = Vec::new();
        text_files(path, &mut files)?;
        for file in files {
            match options.decode(&read_bytes(&file)?) {
                Ok(text) if !text.trim().is_empty() => {
                    corpus.documents.push(text.trim().to_string())
                }
                Ok(_) => {}
                Err(reason) if options.on_bad_row == OnBadRow::Skip => {
                    corpus.skipped.push(SkippedRow {
                        location: file.display().to_string(),
                        reason,
                    });
                }
                Err(message) => {
                    return Err(DataError::Document {
                        path: file,
                        message,
                    });
                }
            }
        }
    } else {
        return Err(DataError::InvalidInput(format!(
            "--corpus {}: no such file or directory",
            path.display()
        )));
    }
    if corpus.documents.is_empty() {
        return Err(DataError::Layout {
            path: path.to_path_buf(),
            message: "no text found (a directory of .txt files or a file of lines)".into(),
        });
    }
    Ok(corpus)
}

fn text_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in sorted_entries(dir)? {
        if entry.is_dir() {
            text_files(&entry, out)?;
        } else if entry.extension().is_some_and(|e| e == "txt") {
            out.push(entry);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_give_documents_and_split_whole_ones() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("dirs");
        for i in 0..10 {
            std::fs::write(
                dir.path().join(format!("a/b/{i}.txt")),
                format!(" doc {i}\n"),
            )
            .expect("write");
        }
        std::fs::write(dir.path().join("a/notes.md"), "not text").expect("write");
        std::fs::write(dir.path().join("a/bad.txt"), [0xff, 0xfe, 0x41]).expect("write");
        let error = read_corpus(dir.path(), ReadOptions::default()).expect_err("bad UTF-8");
        assert!(error.to_string().contains("bad.txt"), "{error}");
        let options = ReadOptions {
            on_bad_row: OnBadRow::Skip,
            encoding: None,
        };
        let corpus = read_corpus(dir.path(), options).expect("reads");
        assert_eq!(corpus.documents.len(), 10);
        assert_eq!(corpus.skipped.len(), 1);
        assert!(corpus.documents.contains(&"doc 3".to_string()));
        let (train, held) = corpus.split(0.2, 1);
        assert_eq!((train.len(), held.len()), (8, 2));
        assert!(held.iter().all(|d| !train.contains(d)));
        assert_eq!(corpus.split(0.2, 1).1, held);
    }

    #[test]
    fn a_file_gives_one_document_per_line() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("corpus.txt");
        std::fs::write(&path, "first line\n\n  second line \n").expect("write");
        let corpus = read_corpus(&path, ReadOptions::default()).expect("reads");
        assert_eq!(corpus.documents, vec!["first line", "second line"]);
    }
}
