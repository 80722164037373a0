//! Danish geography for generalising a postcode: the five regions (NUTS-2 / DAGI region codes)
//! and the municipalities, reached from a four-digit postcode.
//!
//! Postcodes do not nest inside municipalities everywhere; the table maps each postcode range to
//! the municipality that holds most of its addresses. That is the granularity the generalisation
//! promises (a region or municipality), and it never needs an address.

/// A Danish region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Region {
    /// Region Nordjylland (1081).
    Nordjylland,
    /// Region Midtjylland (1082).
    Midtjylland,
    /// Region Syddanmark (1083).
    Syddanmark,
    /// Region Hovedstaden (1084).
    Hovedstaden,
    /// Region Sjælland (1085).
    Sjaelland,
}

impl Region {
    /// Every region, in code order.
    pub const ALL: [Region; 5] = [
        Region::Nordjylland,
        Region::Midtjylland,
        Region::Syddanmark,
        Region::Hovedstaden,
        Region::Sjaelland,
    ];

    /// The label used in study rows (ASCII, lowercase).
    pub fn label(self) -> &'static str {
        match self {
            Region::Nordjylland => "nordjylland",
            Region::Midtjylland => "midtjylland",
            Region::Syddanmark => "syddanmark",
            Region::Hovedstaden => "hovedstaden",
            Region::Sjaelland => "sjaelland",
        }
    }

    /// The official four-digit region code (DAGI, Danmarks Statistik).
    pub fn code(self) -> u16 {
        match self {
            Region::Nordjylland => 1081,
            Region::Midtjylland => 1082,
            Region::Syddanmark => 1083,
            Region::Hovedstaden => 1084,
            Region::Sjaelland => 1085,
        }
    }

    /// The region of an official region code, if any.
    pub fn from_code(code: u16) -> Option<Region> {
        Region::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The official name, e.g. "Region Sjælland".
    pub fn name(self) -> &'static str {
        match self {
            Region::Nordjylland => "Region Nordjylland",
            Region::Midtjylland => "Region Midtjylland",
            Region::Syddanmark => "Region Syddanmark",
            Region::Hovedstaden => "Region Hovedstaden",
            Region::Sjaelland => "Region Sjælland",
        }
    }
}

/// A municipality: official three-digit code, name and region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Municipality {
    /// Official municipality code.
    pub code: u16,
    /// Name.
    pub name: &'static str,
    /// Region it belongs to.
    pub region: Region,
}

const fn m(code: u16, name: &'static str, region: Region) -> Municipality {
    Municipality { code, name, region }
}

use Region::{
    Hovedstaden as H, Midtjylland as M, Nordjylland as N, Sjaelland as S, Syddanmark as Y,
};

/// Postcode ranges (inclusive) and the municipality that holds most of their addresses.
/// Sorted by the first postcode; ranges do not overlap.
const POSTCODE_TABLE: &[(u16, u16, Municipality)] = &[
    (1000, 2499, m(101, "København", H)),
    (2500, 2500, m(101, "København", H)),
    (2600, 2600, m(161, "Glostrup", H)),
    (2605, 2605, m(153, "Brøndby", H)),
    (2610, 2610, m(175, "Rødovre", H)),
    (2620, 2620, m(165, "Albertslund", H)),
    (2625, 2625, m(187, "Vallensbæk", H)),
    (2630, 2630, m(169, "Høje-Taastrup", H)),
    (2635, 2635, m(183, "Ishøj", H)),
    (2640, 2640, m(169, "Høje-Taastrup", H)),
    (2650, 2650, m(167, "Hvidovre", H)),
    (2660, 2660, m(153, "Brøndby", H)),
    (2665, 2665, m(187, "Vallensbæk", H)),
    (2670, 2670, m(253, "Greve", S)),
    (2680, 2680, m(269, "Solrød", S)),
    (2690, 2690, m(253, "Greve", S)),
    (2700, 2700, m(101, "København", H)),
    (2720, 2720, m(101, "København", H)),
    (2730, 2730, m(163, "Herlev", H)),
    (2740, 2750, m(151, "Ballerup", H)),
    (2760, 2760, m(151, "Ballerup", H)),
    (2765, 2765, m(240, "Egedal", H)),
    (2770, 2770, m(185, "Tårnby", H)),
    (2791, 2791, m(155, "Dragør", H)),
    (2800, 2800, m(173, "Lyngby-Taarbæk", H)),
    (2820, 2820, m(157, "Gentofte", H)),
    (2830, 2830, m(173, "Lyngby-Taarbæk", H)),
    (2840, 2840, m(230, "Rudersdal", H)),
    (2850, 2850, m(230, "Rudersdal", H)),
    (2860, 2880, m(159, "Gladsaxe", H)),
    (2900, 2930, m(157, "Gentofte", H)),
    (2942, 2970, m(223, "Hørsholm", H)),
    (2980, 2990, m(210, "Fredensborg", H)),
    (3000, 3199, m(217, "Helsingør", H)),
    (3200, 3299, m(270, "Gribskov", H)),
    (3300, 3399, m(260, "Halsnæs", H)),
    (3400, 3499, m(219, "Hillerød", H)),
    (3500, 3599, m(190, "Furesø", H)),
    (3600, 3649, m(250, "Frederikssund", H)),
    (3650, 3699, m(240, "Egedal", H)),
    (3700, 3799, m(400, "Bornholm", H)),
    (4000, 4049, m(265, "Roskilde", S)),
    (4050, 4050, m(250, "Frederikssund", H)),
    (4051, 4099, m(265, "Roskilde", S)),
    (4100, 4199, m(329, "Ringsted", S)),
    (4200, 4299, m(330, "Slagelse", S)),
    (4300, 4399, m(316, "Holbæk", S)),
    (4400, 4499, m(326, "Kalundborg", S)),
    (4500, 4599, m(306, "Odsherred", S)),
    (4600, 4699, m(259, "Køge", S)),
    (4700, 4799, m(370, "Næstved", S)),
    (4800, 4899, m(376, "Guldborgsund", S)),
    (4900, 4999, m(360, "Lolland", S)),
    (5000, 5299, m(461, "Odense", Y)),
    (5300, 5399, m(440, "Kerteminde", Y)),
    (5400, 5499, m(480, "Nordfyns", Y)),
    (5500, 5599, m(410, "Middelfart", Y)),
    (5600, 5699, m(430, "Faaborg-Midtfyn", Y)),
    (5700, 5799, m(479, "Svendborg", Y)),
    (5800, 5899, m(450, "Nyborg", Y)),
    (5900, 5999, m(482, "Langeland", Y)),
    (6000, 6099, m(621, "Kolding", Y)),
    (6100, 6199, m(510, "Haderslev", Y)),
    (6200, 6299, m(580, "Aabenraa", Y)),
    (6300, 6399, m(550, "Tønder", Y)),
    (6400, 6499, m(540, "Sønderborg", Y)),
    (6500, 6599, m(575, "Vejen", Y)),
    (6600, 6699, m(575, "Vejen", Y)),
    (6700, 6799, m(561, "Esbjerg", Y)),
    (6800, 6879, m(573, "Varde", Y)),
    (6880, 6880, m(760, "Ringkøbing-Skjern", M)),
    (6881, 6892, m(573, "Varde", Y)),
    (6893, 6893, m(760, "Ringkøbing-Skjern", M)),
    (6894, 6899, m(573, "Varde", Y)),
    (6900, 6999, m(760, "Ringkøbing-Skjern", M)),
    (7000, 7099, m(607, "Fredericia", Y)),
    (7100, 7129, m(630, "Vejle", Y)),
    (7130, 7172, m(766, "Hedensted", M)),
    (7173, 7189, m(630, "Vejle", Y)),
    (7190, 7269, m(530, "Billund", Y)),
    (7270, 7299, m(657, "Herning", M)),
    (7300, 7329, m(630, "Vejle", Y)),
    (7330, 7399, m(756, "Ikast-Brande", M)),
    (7400, 7499, m(657, "Herning", M)),
    (7500, 7599, m(661, "Holstebro", M)),
    (7600, 7699, m(665, "Lemvig", M)),
    (7700, 7789, m(787, "Thisted", N)),
    (7790, 7799, m(671, "Struer", M)),
    (7800, 7899, m(779, "Skive", M)),
    (7900, 7999, m(773, "Morsø", N)),
    (8000, 8299, m(751, "Aarhus", M)),
    (8300, 8399, m(727, "Odder", M)),
    (8400, 8499, m(707, "Norddjurs", M)),
    (8500, 8599, m(707, "Norddjurs", M)),
    (8600, 8699, m(740, "Silkeborg", M)),
    (8700, 8799, m(615, "Horsens", M)),
    (8800, 8899, m(791, "Viborg", M)),
    (8900, 8999, m(730, "Randers", M)),
    (9000, 9299, m(851, "Aalborg", N)),
    (9300, 9399, m(813, "Frederikshavn", N)),
    (9400, 9499, m(851, "Aalborg", N)),
    (9500, 9599, m(846, "Mariagerfjord", N)),
    (9600, 9699, m(820, "Vesthimmerlands", N)),
    (9700, 9799, m(810, "Brønderslev", N)),
    (9800, 9899, m(860, "Hjørring", N)),
    (9900, 9999, m(813, "Frederikshavn", N)),
];

/// Every municipality named in the postcode table, without repeats.
pub fn municipalities() -> Vec<Municipality> {
    let mut out: Vec<Municipality> = Vec::new();
    for (_, _, mu) in POSTCODE_TABLE {
        if !out.iter().any(|o| o.code == mu.code) {
            out.push(*mu);
        }
    }
    out.sort_by_key(|m| m.code);
    out
}

/// The municipality of a Danish postcode (four ASCII digits, optionally with a `DK-` prefix
/// and surrounding spaces). `None` for malformed or unassigned postcodes.
pub fn municipality_of_postcode(postcode: &str) -> Option<Municipality> {
    let p = postcode.trim();
    let p = p
        .strip_prefix("DK-")
        .or_else(|| p.strip_prefix("DK"))
        .unwrap_or(p)
        .trim();
    if p.len() != 4 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u16 = p.parse().ok()?;
    POSTCODE_TABLE
        .iter()
        .find(|(lo, hi, _)| *lo <= n && n <= *hi)
        .map(|(_, _, mu)| *mu)
}

/// The region of a Danish postcode.
pub fn region_of_postcode(postcode: &str) -> Option<Region> {
    municipality_of_postcode(postcode).map(|m| m.region)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_disjoint() {
        for w in POSTCODE_TABLE.windows(2) {
            assert!(w[0].0 <= w[0].1, "{:?}", w[0].0);
            assert!(w[0].1 < w[1].0, "overlap at {}", w[1].0);
        }
    }

    #[test]
    fn known_postcodes() {
        assert_eq!(region_of_postcode("8000"), Some(Region::Midtjylland));
        assert_eq!(region_of_postcode("DK-5000"), Some(Region::Syddanmark));
        assert_eq!(region_of_postcode("2100"), Some(Region::Hovedstaden));
        assert_eq!(region_of_postcode("9000"), Some(Region::Nordjylland));
        assert_eq!(region_of_postcode("4000"), Some(Region::Sjaelland));
        assert_eq!(municipality_of_postcode("7400").map(|m| m.code), Some(657));
        assert_eq!(region_of_postcode("0800"), None);
        assert_eq!(region_of_postcode("80000"), None);
        assert_eq!(region_of_postcode("80a0"), None);
        assert_eq!(region_of_postcode(""), None);
    }

    /// PROTOCOL.md carries the table; it must be this one.
    #[test]
    fn protocol_documents_this_table() {
        let doc = include_str!("../../PROTOCOL.md");
        let start = doc
            .find("Postcode ranges → municipality:")
            .expect("the section");
        let block = doc[start..]
            .split("```text\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("the table block");
        let documented: Vec<String> = block.split_whitespace().map(str::to_string).collect();
        let ours: Vec<String> = POSTCODE_TABLE
            .iter()
            .map(|(a, b, m)| {
                if a == b {
                    format!("{a}:{}", m.code)
                } else {
                    format!("{a}-{b}:{}", m.code)
                }
            })
            .collect();
        assert_eq!(documented, ours);
        let count = format!("the {} codes of the table", municipalities().len());
        assert!(doc.contains(&count), "PROTOCOL.md should say {count:?}");
    }

    /// Postcodes next to a region border, where a coarse range would put the donor in the
    /// neighbouring region.
    #[test]
    fn postcodes_at_region_borders() {
        use Region::{Hovedstaden, Midtjylland, Nordjylland, Sjaelland, Syddanmark};
        for (postcode, region, municipality) in [
            ("2665", Hovedstaden, 187), // Vallensbæk Strand
            ("2670", Sjaelland, 253),   // Greve
            ("2680", Sjaelland, 269),   // Solrød Strand
            ("4040", Sjaelland, 265),   // Jyllinge
            ("4050", Hovedstaden, 250), // Skibby
            ("4060", Sjaelland, 265),   // Kirke Såby
            ("6870", Syddanmark, 573),  // Ølgod
            ("6880", Midtjylland, 760), // Tarm
            ("6893", Midtjylland, 760), // Hemmet
            ("7120", Syddanmark, 630),  // Vejle Øst
            ("7130", Midtjylland, 766), // Juelsminde
            ("7171", Midtjylland, 766), // Uldum
            ("7173", Syddanmark, 630),  // Vonge
            ("7190", Syddanmark, 530),  // Billund
            ("7280", Midtjylland, 657), // Sønder Felding
            ("7323", Syddanmark, 630),  // Give
            ("7330", Midtjylland, 756), // Brande
            ("7362", Midtjylland, 756), // Hampen
            ("7770", Nordjylland, 787), // Vestervig
            ("7790", Midtjylland, 671), // Thyholm
        ] {
            let m = municipality_of_postcode(postcode).expect(postcode);
            assert_eq!((m.region, m.code), (region, municipality), "{postcode}");
            assert_eq!(region_of_postcode(postcode), Some(region), "{postcode}");
        }
    }
}
