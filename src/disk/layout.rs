//! Layout arithmetic: where each partition goes on the medium, and the size
//! strings users type (`--size 4G`).
//!
//! Every partition starts on a 1 MiB boundary (the first at 1 MiB) and its size
//! is rounded up to whole MiB, which keeps partitions aligned to erase blocks on
//! SD cards and eMMC and to 4096-byte sectors. A partition with no size takes
//! the rest of the medium; only the last may do that.

use anyhow::{bail, Context, Result};

/// 1 MiB, the alignment of every partition start and size.
pub const MIB: u64 = 1 << 20;

/// Largest byte offset an MBR can describe with 32-bit LBAs of 512 bytes (2 TiB).
pub const MBR_LIMIT: u64 = (1u64 << 32) * 512;

/// GPT partition entries are 128 entries of 128 bytes.
pub const GPT_ENTRIES: u64 = 128;
pub const GPT_ENTRY_SIZE: u64 = 128;

/// Which partition table the medium carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// DOS/MBR: 4 primary partitions, 512-byte sectors, up to 2 TiB.
    Mbr,
    /// GUID partition table, 512- or 4096-byte sectors.
    Gpt,
}

impl std::fmt::Display for TableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableKind::Mbr => "an MBR partition table",
            TableKind::Gpt => "a GPT partition table",
        })
    }
}

/// What a partition holds; it decides the MBR type byte and GPT type GUID.
/// The mappings (`mbr::type_byte`, `gpt::default_type`) match on this enum
/// exhaustively, so adding a kind makes the compiler point at every table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartKind {
    /// The FAT32 boot partition (firmware, kernel, initramfs, node config).
    BootFat,
    /// Linux data: the system slots (squashfs) and the data partition (ext4).
    LinuxData,
}

/// What a partition of a nodeimg disk is for. The order of [`Role::ALL`] is
/// the order on the medium, so partition numbers, the `nodeimg.*=N` values of
/// the kernel cmdline and the manifest's filesystem names all follow from it;
/// nothing else in the code names a partition by its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// FAT32: firmware, kernel, initramfs, cmdline, node config.
    Boot,
    /// The system image (squashfs of /usr), slot A.
    SystemA,
    /// Slot B, reserved for updates (empty until then).
    SystemB,
    /// ext4, the node's persistent `/`; grows to fill the medium on first boot.
    Data,
}

impl Role {
    /// Every role, in partition order.
    pub const ALL: [Role; 4] = [Role::Boot, Role::SystemA, Role::SystemB, Role::Data];

    /// Position in [`Role::ALL`].
    pub fn index(self) -> usize {
        match self {
            Role::Boot => 0,
            Role::SystemA => 1,
            Role::SystemB => 2,
            Role::Data => 3,
        }
    }

    /// The 1-based partition number in the nodeimg layout.
    pub fn number(self) -> u32 {
        // At most 4: the cast cannot truncate.
        self.index() as u32 + 1
    }

    /// The partition's name (GPT partition name, manifest).
    pub fn name(self) -> &'static str {
        match self {
            Role::Boot => "boot",
            Role::SystemA => "system_a",
            Role::SystemB => "system_b",
            Role::Data => "data",
        }
    }

    /// What the partition type says it holds.
    pub fn kind(self) -> PartKind {
        match self {
            Role::Boot => PartKind::BootFat,
            Role::SystemA | Role::SystemB | Role::Data => PartKind::LinuxData,
        }
    }

    /// The filesystem the builder writes there (`none`: left empty).
    pub fn filesystem(self) -> &'static str {
        match self {
            Role::Boot => "vfat",
            Role::SystemA => "squashfs",
            Role::SystemB => "none",
            Role::Data => "ext4",
        }
    }

    /// The kernel cmdline parameter naming this partition's number for the
    /// init (`nodeimg.data=4`); slot B has none until updates switch slots.
    pub fn cmdline_key(self) -> Option<&'static str> {
        match self {
            Role::Boot => Some("nodeimg.boot"),
            Role::SystemA => Some("nodeimg.system"),
            Role::SystemB => None,
            Role::Data => Some("nodeimg.data"),
        }
    }
}

/// A requested partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartSpec {
    pub name: String,
    /// Bytes (rounded up to 1 MiB); `None` takes the rest of the medium (only the last).
    pub size: Option<u64>,
    pub kind: PartKind,
}

/// A partition with its place on the medium.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// 1-based partition number (the table slot).
    pub number: u32,
    pub name: String,
    /// Offset from the start of the medium, in bytes (a multiple of 1 MiB).
    pub start: u64,
    /// Length in bytes (a multiple of 1 MiB).
    pub size: u64,
    pub kind: PartKind,
}

impl Placed {
    /// First byte after the partition.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// Why a layout does not fit; callers may branch on it (e.g. to suggest a larger `--size`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("the partitions need at least {} but --size is {}", human_pair(*.need, *.have).0, human_pair(*.need, *.have).1)]
    TooSmall { need: u64, have: u64 },
    #[error("an MBR partition table holds at most 4 partitions, but the layout has {count}")]
    TooManyMbr { count: usize },
    #[error("partition `{name}` has no size (takes the rest of the disk) but is not the last; only the last partition may take the rest")]
    RestNotLast { name: String },
    #[error("partition `{name}` ends at {}, beyond the 2 TiB an MBR partition table can address; use GPT", human(*.end))]
    BeyondMbrLimit { name: String, end: u64 },
    #[error("partition `{name}` has size 0")]
    ZeroSize { name: String },
    #[error("sector size {sector} is not supported by {table} (use 512{})", if *.table == TableKind::Gpt { " or 4096" } else { "" })]
    BadSector { table: TableKind, sector: u64 },
    #[error("the disk size {total} bytes is not a multiple of the {sector}-byte sector size")]
    UnalignedTotal { total: u64, sector: u64 },
}

/// Both sizes in human form; when rounding would show them equal, the exact
/// byte counts are added so the message never reads "need 1.2 GiB but is 1.2 GiB".
fn human_pair(a: u64, b: u64) -> (String, String) {
    let (ha, hb) = (human(a), human(b));
    if ha == hb {
        (format!("{ha} ({a} bytes)"), format!("{hb} ({b} bytes)"))
    } else {
        (ha, hb)
    }
}

/// Bytes at the end of a GPT disk taken by the backup entries and header
/// (33 sectors of 512, or 5 sectors of 4096).
pub fn gpt_backup_bytes(sector: u64) -> u64 {
    let entry_sectors = (GPT_ENTRIES * GPT_ENTRY_SIZE).div_ceil(sector);
    (entry_sectors + 1) * sector
}

fn align_up(v: u128, a: u128) -> u128 {
    v.div_ceil(a) * a
}

/// Places `parts` in order on a medium of `total` bytes with `sector`-byte sectors.
///
/// Each partition starts at the next 1 MiB boundary (the first at 1 MiB) and its
/// size is rounded up to 1 MiB. A `None` size (only allowed for the last) takes
/// everything up to the end of the medium, less the backup GPT for GPT, with the
/// end aligned down to 1 MiB; it gets at least 1 MiB or the medium is too small.
pub fn plan(
    table: TableKind,
    sector: u64,
    total: u64,
    parts: &[PartSpec],
) -> Result<Vec<Placed>, LayoutError> {
    let sector_ok = match table {
        TableKind::Mbr => sector == 512,
        TableKind::Gpt => sector == 512 || sector == 4096,
    };
    if !sector_ok {
        return Err(LayoutError::BadSector { table, sector });
    }
    if total % sector != 0 {
        return Err(LayoutError::UnalignedTotal { total, sector });
    }
    if table == TableKind::Mbr && parts.len() > 4 {
        return Err(LayoutError::TooManyMbr { count: parts.len() });
    }
    for (i, p) in parts.iter().enumerate() {
        match p.size {
            None if i + 1 != parts.len() => {
                return Err(LayoutError::RestNotLast {
                    name: p.name.clone(),
                })
            }
            Some(0) => {
                return Err(LayoutError::ZeroSize {
                    name: p.name.clone(),
                })
            }
            _ => {}
        }
    }

    let reserved_end = match table {
        TableKind::Mbr => 0,
        TableKind::Gpt => gpt_backup_bytes(sector),
    };
    // Room for the partitions: up to the backup GPT (or the end for MBR).
    let usable_end = total.saturating_sub(reserved_end);

    // First pass in u128 so absurd sizes cannot overflow: the smallest medium that fits.
    let mib = MIB as u128;
    let mut cursor: u128 = mib;
    let mut spans = Vec::with_capacity(parts.len());
    for p in parts {
        let start = align_up(cursor, mib);
        let len = align_up(u128::from(p.size.unwrap_or(MIB)), mib);
        spans.push((start, len));
        cursor = start + len;
    }
    let need = cursor + u128::from(reserved_end);
    if need > u128::from(total) {
        return Err(LayoutError::TooSmall {
            need: u64::try_from(need).unwrap_or(u64::MAX),
            have: total,
        });
    }

    // Everything fits in u64 now (need <= total).
    let mut placed = Vec::with_capacity(parts.len());
    for (i, (p, (start, len))) in parts.iter().zip(spans).enumerate() {
        let start = start as u64;
        let size = match p.size {
            Some(_) => len as u64,
            None => (usable_end / MIB) * MIB - start,
        };
        if table == TableKind::Mbr && start + size > MBR_LIMIT {
            return Err(LayoutError::BeyondMbrLimit {
                name: p.name.clone(),
                end: start + size,
            });
        }
        placed.push(Placed {
            number: i as u32 + 1,
            name: p.name.clone(),
            start,
            size,
            kind: p.kind,
        });
    }
    Ok(placed)
}

/// Parses a size such as `4G`, `4GiB`, `512M`, `512MiB`, `1T`, `1.5G` or plain
/// bytes `1048576`.
///
/// The suffixes K, M, G and T (optionally followed by `iB`, any case) are
/// **binary**: K = 1024, M = 1024², G = 1024³, T = 1024⁴. `B` alone means bytes.
/// SI spellings such as `GB` are refused rather than guessed, since `4GB` means
/// 4 000 000 000 bytes to some people and 4 GiB to others. A fraction is allowed
/// with a suffix and the result is rounded down to whole bytes; zero is refused.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = (&t[..split], t[split..].trim());
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "kb" | "mb" | "gb" | "tb" => bail!(
            "size `{s}`: `{suffix}` is ambiguous; write `{}` or `{}iB` (sizes are binary, 1K = 1024 bytes)",
            &suffix[..1].to_ascii_uppercase(),
            &suffix[..1].to_ascii_uppercase()
        ),
        _ => bail!(
            "size `{s}`: expected a number with an optional K, M, G or T suffix (binary: 1K = 1024 bytes), e.g. 4G, 512MiB, 1048576"
        ),
    };
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') || num.ends_with('.')
    {
        bail!("size `{s}`: `{num}` is not a number");
    }
    if !frac_part.is_empty() && shift == 0 {
        bail!("size `{s}`: a byte count must be a whole number");
    }
    if frac_part.len() > 12 {
        bail!("size `{s}`: too many decimal places");
    }
    let int: u128 = if int_part.is_empty() {
        0
    } else {
        int_part
            .parse()
            .with_context(|| format!("size `{s}`: `{int_part}` is not a number"))?
    };
    let mut bytes = int
        .checked_shl(shift)
        .filter(|v| *v <= u128::from(u64::MAX))
        .with_context(|| format!("size `{s}` is too large"))?;
    if !frac_part.is_empty() {
        let frac: u128 = frac_part
            .parse()
            .with_context(|| format!("size `{s}`: `{frac_part}` is not a number"))?;
        bytes += (frac << shift) / 10u128.pow(frac_part.len() as u32);
    }
    let bytes = u64::try_from(bytes).map_err(|_| anyhow::anyhow!("size `{s}` is too large"))?;
    if bytes == 0 {
        bail!("size `{s}` is zero");
    }
    Ok(bytes)
}

/// A size in bytes, never zero, as users write it (`4G`, `512MiB`, `1048576`;
/// see [`parse_size`]). Parsed by clap at the command line, so a bad `--size`
/// is a usage error before anything runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

impl Size {
    /// `None` for zero.
    pub fn new(bytes: u64) -> Option<Size> {
        (bytes != 0).then_some(Size(bytes))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a size string was refused (the message of [`parse_size`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseSizeError(String);

impl std::str::FromStr for Size {
    type Err = ParseSizeError;

    fn from_str(s: &str) -> Result<Size, ParseSizeError> {
        parse_size(s)
            .map(Size)
            .map_err(|e| ParseSizeError(format!("{e:#}")))
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&human(self.0))
    }
}

/// A size for people: `512 B`, `1.5 GiB`, `256 MiB` (binary units). Values
/// below 10 of a unit keep one decimal, larger ones are whole; rounded to nearest.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 2)) {
        unit += 1;
    }
    let v = bytes as f64 / (1u64 << (10 * (unit + 1))) as f64;
    if v < 9.95 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

/// "256 MiB" for whole mebibytes, "255.6 MiB" otherwise (sizes of
/// partitions and filesystems).
pub fn mib(bytes: u64) -> String {
    if bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        mib1(bytes)
    }
}

/// "300.0 MiB": always one decimal, for amounts compared with each other.
pub fn mib1(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, size: Option<u64>, kind: PartKind) -> PartSpec {
        PartSpec {
            name: name.into(),
            size,
            kind,
        }
    }

    fn pi_layout() -> Vec<PartSpec> {
        vec![
            spec("boot", Some(256 * MIB), PartKind::BootFat),
            spec("system-a", Some(700 * MIB), PartKind::LinuxData),
            spec("system-b", Some(700 * MIB), PartKind::LinuxData),
            spec("data", None, PartKind::LinuxData),
        ]
    }

    #[test]
    fn mbr_plan_places_in_order_aligned_and_rest_fills_to_end() {
        let total = 4 << 30;
        let p = plan(TableKind::Mbr, 512, total, &pi_layout()).unwrap();
        let got: Vec<(u32, u64, u64)> = p.iter().map(|x| (x.number, x.start, x.size)).collect();
        assert_eq!(
            got,
            vec![
                (1, MIB, 256 * MIB),
                (2, 257 * MIB, 700 * MIB),
                (3, 957 * MIB, 700 * MIB),
                (4, 1657 * MIB, total - 1657 * MIB),
            ]
        );
        assert_eq!(p[3].end(), total);
        assert_eq!(p[0].kind, PartKind::BootFat);
        assert_eq!(p[3].name, "data");
    }

    #[test]
    fn sizes_round_up_to_mib() {
        let parts = vec![
            spec("a", Some(1), PartKind::BootFat),
            spec("b", Some(MIB + 1), PartKind::LinuxData),
        ];
        let p = plan(TableKind::Mbr, 512, 64 * MIB, &parts).unwrap();
        assert_eq!((p[0].start, p[0].size), (MIB, MIB));
        assert_eq!((p[1].start, p[1].size), (2 * MIB, 2 * MIB));
    }

    #[test]
    fn gpt_rest_leaves_room_for_backup_and_aligns_down() {
        let total = 64 * MIB;
        let parts = vec![
            spec("boot", Some(8 * MIB), PartKind::BootFat),
            spec("data", None, PartKind::LinuxData),
        ];
        for sector in [512, 4096] {
            let p = plan(TableKind::Gpt, sector, total, &parts).unwrap();
            // The backup GPT sits in the last MiB, so the data ends one MiB early.
            assert_eq!(p[1].start, 9 * MIB);
            assert_eq!(p[1].end(), 63 * MIB, "sector {sector}");
        }
        assert_eq!(gpt_backup_bytes(512), 33 * 512);
        assert_eq!(gpt_backup_bytes(4096), 5 * 4096);
        // A fixed last partition may run right up to the backup GPT.
        let fixed = vec![spec("x", Some(62 * MIB), PartKind::LinuxData)];
        let total = 63 * MIB + gpt_backup_bytes(512);
        assert_eq!(
            plan(TableKind::Gpt, 512, total, &fixed).unwrap()[0].end(),
            63 * MIB
        );
        let err = plan(TableKind::Gpt, 512, total - 512, &fixed).unwrap_err();
        assert_eq!(
            err,
            LayoutError::TooSmall {
                need: total,
                have: total - 512
            }
        );
    }

    #[test]
    fn too_small_message() {
        let parts = vec![
            spec("boot", Some(200 * MIB), PartKind::BootFat),
            spec("system", Some(1 << 30), PartKind::LinuxData),
            spec("data", None, PartKind::LinuxData),
        ];
        let err = plan(TableKind::Mbr, 512, 1 << 30, &parts).unwrap_err();
        // 1 + 200 + 1024 MiB + 1 MiB for the data = 1226 MiB.
        assert_eq!(
            err,
            LayoutError::TooSmall {
                need: 1226 * MIB,
                have: 1 << 30
            }
        );
        assert_eq!(
            err.to_string(),
            "the partitions need at least 1.2 GiB but --size is 1.0 GiB"
        );
        // Exactly enough works; the rest partition gets its 1 MiB.
        let p = plan(TableKind::Mbr, 512, 1226 * MIB, &parts).unwrap();
        assert_eq!(p[2].size, MIB);
    }

    #[test]
    fn too_small_message_shows_bytes_when_rounding_hides_the_gap() {
        let e = LayoutError::TooSmall {
            need: 1226 * MIB,
            have: 1225 * MIB,
        };
        assert_eq!(
            e.to_string(),
            format!(
                "the partitions need at least 1.2 GiB ({} bytes) but --size is 1.2 GiB ({} bytes)",
                1226 * MIB,
                1225 * MIB
            )
        );
    }

    #[test]
    fn structural_errors() {
        let five: Vec<PartSpec> = (0..5)
            .map(|i| spec(&format!("p{i}"), Some(MIB), PartKind::LinuxData))
            .collect();
        let e = plan(TableKind::Mbr, 512, 1 << 30, &five).unwrap_err();
        assert_eq!(
            e.to_string(),
            "an MBR partition table holds at most 4 partitions, but the layout has 5"
        );
        // GPT takes five.
        assert_eq!(plan(TableKind::Gpt, 512, 1 << 30, &five).unwrap().len(), 5);

        let bad = vec![
            spec("data", None, PartKind::LinuxData),
            spec("boot", Some(MIB), PartKind::BootFat),
        ];
        let e = plan(TableKind::Gpt, 512, 1 << 30, &bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            "partition `data` has no size (takes the rest of the disk) but is not the last; only the last partition may take the rest"
        );

        let zero = vec![spec("z", Some(0), PartKind::LinuxData)];
        assert_eq!(
            plan(TableKind::Mbr, 512, 1 << 30, &zero)
                .unwrap_err()
                .to_string(),
            "partition `z` has size 0"
        );
        assert_eq!(
            plan(TableKind::Mbr, 4096, 1 << 30, &zero)
                .unwrap_err()
                .to_string(),
            "sector size 4096 is not supported by an MBR partition table (use 512)"
        );
        assert!(matches!(
            plan(TableKind::Gpt, 1024, 1 << 30, &zero).unwrap_err(),
            LayoutError::BadSector { .. }
        ));
        assert_eq!(
            plan(TableKind::Gpt, 4096, (1 << 30) + 512, &zero).unwrap_err(),
            LayoutError::UnalignedTotal {
                total: (1 << 30) + 512,
                sector: 4096
            }
        );
    }

    #[test]
    fn mbr_beyond_2_tib() {
        let tib = 1u64 << 40;
        let parts = vec![
            spec("boot", Some(256 * MIB), PartKind::BootFat),
            spec("data", None, PartKind::LinuxData),
        ];
        let e = plan(TableKind::Mbr, 512, 3 * tib, &parts).unwrap_err();
        assert_eq!(
            e.to_string(),
            "partition `data` ends at 3.0 TiB, beyond the 2 TiB an MBR partition table can address; use GPT"
        );
        // Exactly 2 TiB is addressable; GPT has no such limit.
        let p = plan(TableKind::Mbr, 512, 2 * tib, &parts).unwrap();
        assert_eq!(p[1].end(), MBR_LIMIT);
        assert!(plan(TableKind::Gpt, 512, 3 * tib, &parts).is_ok());
    }

    #[test]
    fn huge_sizes_do_not_overflow() {
        let parts = vec![
            spec("a", Some(u64::MAX), PartKind::LinuxData),
            spec("b", Some(u64::MAX), PartKind::LinuxData),
        ];
        let e = plan(TableKind::Gpt, 512, 1 << 30, &parts).unwrap_err();
        assert_eq!(
            e,
            LayoutError::TooSmall {
                need: u64::MAX,
                have: 1 << 30
            }
        );
    }

    #[test]
    fn parse_sizes() {
        let g = 1u64 << 30;
        assert_eq!(parse_size("4G").unwrap(), 4 * g);
        assert_eq!(parse_size("4GiB").unwrap(), 4 * g);
        assert_eq!(parse_size("4gib").unwrap(), 4 * g);
        assert_eq!(parse_size(" 512M ").unwrap(), 512 * MIB);
        assert_eq!(parse_size("512MiB").unwrap(), 512 * MIB);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("1048576").unwrap(), MIB);
        assert_eq!(parse_size("100B").unwrap(), 100);
        assert_eq!(parse_size("1.5G").unwrap(), g + g / 2);
        assert_eq!(parse_size(".5M").unwrap(), MIB / 2);
        // Rounded down to whole bytes: 0.1 KiB = 102.4 bytes.
        assert_eq!(parse_size("0.1K").unwrap(), 102);
    }

    #[test]
    fn parse_size_errors_are_clear() {
        let err = |s: &str| parse_size(s).unwrap_err().to_string();
        assert!(err("0").contains("is zero"), "{}", err("0"));
        assert!(err("0G").contains("is zero"));
        assert!(err("0.0001K").contains("is zero"));
        assert!(err("abc").contains("expected a number"));
        assert!(err("4X").contains("expected a number"));
        assert!(err("-4G").contains("expected a number"));
        assert!(err("").contains("not a number"));
        assert!(err("G").contains("not a number"));
        assert!(err("1.2.3G").contains("not a number"));
        assert!(err("4.G").contains("not a number"));
        assert!(err("1.5").contains("whole number"));
        assert!(err("4GB").contains("ambiguous"), "{}", err("4GB"));
        assert!(err("4GB").contains("`G`"));
        assert!(err("99999999999T").contains("too large"));
        assert!(err("99999999999999999999999999999999999999999").contains("not a number"));
    }

    #[test]
    fn size_from_str_is_parse_size_and_never_zero() {
        assert_eq!("4G".parse::<Size>().map(Size::bytes), Ok(4 << 30));
        assert_eq!(Size::new(0), None);
        let e = "0".parse::<Size>().unwrap_err();
        assert!(e.to_string().contains("is zero"), "{e}");
        assert_eq!(
            Size::new(3 << 29).map(|s| s.to_string()).as_deref(),
            Some("1.5 GiB")
        );
    }

    #[test]
    fn mib_texts() {
        assert_eq!(mib(256 * MIB), "256 MiB");
        assert_eq!(mib(256 * MIB - MIB / 2), "255.5 MiB");
        assert_eq!(mib1(300 * MIB), "300.0 MiB");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(256 * MIB), "256 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(1 << 30), "1.0 GiB");
        assert_eq!(human(1023 * MIB), "1023 MiB");
        assert_eq!(human(10 << 30), "10 GiB");
        assert_eq!(human(1 << 40), "1.0 TiB");
        assert_eq!(human(u64::MAX), "16 EiB");
    }
}
