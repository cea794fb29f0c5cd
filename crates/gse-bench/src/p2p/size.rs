//! Byte sizes as people type them: `1GiB`, `64MiB`, `500MB`, `4k`, `1.5G`,
//! `1048576`. `KiB/MiB/GiB` and the bare letters `K/M/G` are binary
//! (powers of 1024); `KB/MB/GB` are decimal (powers of 1000).

/// Parses a size; the error says what is accepted.
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim();
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad(text)),
    };
    let value: f64 = number.parse().map_err(|_| bad(text))?;
    let bytes = value * factor as f64;
    if !(1.0..=(1u64 << 50) as f64).contains(&bytes) {
        return Err(format!("{text:?}: give a size from 1 byte to 1 PiB"));
    }
    Ok(bytes.round() as u64)
}

fn bad(text: &str) -> String {
    format!(
        "{text:?} is not a size: give a number with an optional unit, e.g. 1GiB, 64MiB, 500MB, 4096"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_units() {
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("64MiB"), Ok(64 << 20));
        assert_eq!(parse("64m"), Ok(64 << 20));
        assert_eq!(parse("500MB"), Ok(500_000_000));
        assert_eq!(parse("1.5G"), Ok(3 << 29));
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse(" 2 KiB "), Ok(2048));
    }

    #[test]
    fn nonsense_is_refused_with_examples() {
        assert!(parse("lots").unwrap_err().contains("e.g. 1GiB"));
        assert!(parse("12XB").unwrap_err().contains("not a size"));
        assert!(parse("0").unwrap_err().contains("1 byte"));
        assert!(parse("").is_err());
    }
}
