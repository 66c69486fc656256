//! Files in `[state] dir`, written whole or not at all: the new content goes to a file
//! beside the old one, is flushed to the disk, and then takes the old one's name, so that a
//! crash or a full disk leaves either the old file or the new one, never half of one.

use std::io::{self, Write};
use std::path::Path;

/// Writes `content` to `path` whole or not at all, making its folder when needed.
pub fn write_whole(path: &Path, content: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut beside = path.as_os_str().to_owned();
    beside.push(".part");
    let beside = std::path::PathBuf::from(beside);
    let written = (|| {
        let mut file = std::fs::File::create(&beside)?;
        file.write_all(content)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&beside);
        return Err(e);
    }
    std::fs::rename(&beside, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_its_folder_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deeper").join("counts.json");
        write_whole(&path, b"one").unwrap();
        write_whole(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["counts.json"], "nothing left beside it");
    }
}
