//! Danish geography for the synthetic population: the five regions, a
//! representative set of real municipalities (with their official
//! municipality codes, approximate 2024 populations and town-centre
//! coordinates), real postcodes with their postal district names, and common
//! street names.
//!
//! Donors are placed by first drawing a region with [`Region::population_share`]
//! and then a municipality of that region with probability proportional to its
//! population among the municipalities listed here. Only a subset of the 98
//! municipalities is listed (at least ten per region), so within a region the
//! large towns are somewhat over-represented; the regional split is right.

pub use datadonor_schemas::geo::Region;

/// What the generator knows of a region beyond the protocol's [`Region`].
pub trait RegionPopulation {
    /// Share of the Danish population living in the region (Danmarks
    /// Statistik, 1 January 2024, rounded); the shares sum to 1.
    fn population_share(self) -> f64;
    /// The municipalities of this region listed in [`MUNICIPALITIES`].
    fn municipalities(self) -> impl Iterator<Item = &'static Municipality>;
}

impl RegionPopulation for Region {
    fn population_share(self) -> f64 {
        match self {
            Region::Hovedstaden => 0.317,
            Region::Sjaelland => 0.144,
            Region::Syddanmark => 0.207,
            Region::Midtjylland => 0.231,
            Region::Nordjylland => 0.101,
        }
    }

    fn municipalities(self) -> impl Iterator<Item = &'static Municipality> {
        MUNICIPALITIES.iter().filter(move |m| m.region == self)
    }
}

/// A real Danish municipality (kommune) as used by the generator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Municipality {
    /// Official three-digit municipality code (e.g. 101 for København).
    pub code: u16,
    /// Name without "Kommune", e.g. "Aarhus".
    pub name: &'static str,
    /// The region the municipality belongs to.
    pub region: Region,
    /// Approximate population in thousands (2024), used as sampling weight.
    pub population_k: u32,
    /// Real postcodes in the municipality with their postal district names.
    pub postcodes: &'static [(&'static str, &'static str)],
    /// Approximate latitude of the main town (WGS 84).
    pub lat: f64,
    /// Approximate longitude of the main town (WGS 84).
    pub lon: f64,
}

macro_rules! muni {
    ($code:expr, $name:expr, $region:ident, $pop:expr, [$(($pc:expr, $city:expr)),+ $(,)?], $lat:expr, $lon:expr) => {
        Municipality {
            code: $code,
            name: $name,
            region: Region::$region,
            population_k: $pop,
            postcodes: &[$(($pc, $city)),+],
            lat: $lat,
            lon: $lon,
        }
    };
}

/// The municipalities the generator places donors in (67 of the 98).
pub const MUNICIPALITIES: &[Municipality] = &[
    // Region Hovedstaden (1084)
    muni!(
        101,
        "København",
        Hovedstaden,
        660,
        [
            ("1050", "København K"),
            ("1620", "København V"),
            ("2100", "København Ø"),
            ("2200", "København N"),
            ("2300", "København S"),
            ("2400", "København NV"),
            ("2450", "København SV"),
            ("2500", "Valby"),
            ("2700", "Brønshøj"),
            ("2720", "Vanløse")
        ],
        55.676,
        12.568
    ),
    muni!(
        147,
        "Frederiksberg",
        Hovedstaden,
        105,
        [("2000", "Frederiksberg"), ("1860", "Frederiksberg C")],
        55.679,
        12.532
    ),
    muni!(
        151,
        "Ballerup",
        Hovedstaden,
        52,
        [("2750", "Ballerup"), ("2740", "Skovlunde")],
        55.731,
        12.363
    ),
    muni!(
        157,
        "Gentofte",
        Hovedstaden,
        75,
        [
            ("2900", "Hellerup"),
            ("2820", "Gentofte"),
            ("2920", "Charlottenlund")
        ],
        55.750,
        12.550
    ),
    muni!(
        159,
        "Gladsaxe",
        Hovedstaden,
        70,
        [("2860", "Søborg"), ("2880", "Bagsværd")],
        55.733,
        12.489
    ),
    muni!(
        167,
        "Hvidovre",
        Hovedstaden,
        54,
        [("2650", "Hvidovre")],
        55.643,
        12.474
    ),
    muni!(
        169,
        "Høje-Taastrup",
        Hovedstaden,
        59,
        [("2630", "Taastrup")],
        55.650,
        12.270
    ),
    muni!(
        173,
        "Lyngby-Taarbæk",
        Hovedstaden,
        57,
        [("2800", "Kongens Lyngby")],
        55.770,
        12.503
    ),
    muni!(
        175,
        "Rødovre",
        Hovedstaden,
        41,
        [("2610", "Rødovre")],
        55.681,
        12.454
    ),
    muni!(
        185,
        "Tårnby",
        Hovedstaden,
        44,
        [("2770", "Kastrup")],
        55.630,
        12.600
    ),
    muni!(
        190,
        "Furesø",
        Hovedstaden,
        41,
        [("3520", "Farum"), ("3500", "Værløse")],
        55.808,
        12.360
    ),
    muni!(
        217,
        "Helsingør",
        Hovedstaden,
        64,
        [
            ("3000", "Helsingør"),
            ("3070", "Snekkersten"),
            ("3100", "Hornbæk")
        ],
        56.036,
        12.612
    ),
    muni!(
        219,
        "Hillerød",
        Hovedstaden,
        53,
        [("3400", "Hillerød")],
        55.927,
        12.300
    ),
    muni!(
        230,
        "Rudersdal",
        Hovedstaden,
        57,
        [("2840", "Holte"), ("3460", "Birkerød"), ("2850", "Nærum")],
        55.812,
        12.470
    ),
    muni!(
        400,
        "Bornholm",
        Hovedstaden,
        39,
        [("3700", "Rønne"), ("3730", "Nexø"), ("3770", "Allinge")],
        55.100,
        14.706
    ),
    // Region Sjælland (1085)
    muni!(
        253,
        "Greve",
        Sjaelland,
        51,
        [("2670", "Greve"), ("2690", "Karlslunde")],
        55.583,
        12.300
    ),
    muni!(
        259,
        "Køge",
        Sjaelland,
        63,
        [("4600", "Køge")],
        55.458,
        12.182
    ),
    muni!(
        265,
        "Roskilde",
        Sjaelland,
        91,
        [("4000", "Roskilde")],
        55.642,
        12.080
    ),
    muni!(
        306,
        "Odsherred",
        Sjaelland,
        33,
        [("4500", "Nykøbing Sj")],
        55.925,
        11.671
    ),
    muni!(
        316,
        "Holbæk",
        Sjaelland,
        73,
        [("4300", "Holbæk")],
        55.717,
        11.713
    ),
    muni!(
        320,
        "Faxe",
        Sjaelland,
        38,
        [("4640", "Faxe"), ("4690", "Haslev")],
        55.256,
        12.119
    ),
    muni!(
        326,
        "Kalundborg",
        Sjaelland,
        49,
        [("4400", "Kalundborg")],
        55.681,
        11.089
    ),
    muni!(
        329,
        "Ringsted",
        Sjaelland,
        36,
        [("4100", "Ringsted")],
        55.443,
        11.790
    ),
    muni!(
        330,
        "Slagelse",
        Sjaelland,
        80,
        [("4200", "Slagelse"), ("4220", "Korsør")],
        55.403,
        11.354
    ),
    muni!(
        340,
        "Sorø",
        Sjaelland,
        31,
        [("4180", "Sorø")],
        55.432,
        11.556
    ),
    muni!(
        360,
        "Lolland",
        Sjaelland,
        40,
        [("4900", "Nakskov"), ("4930", "Maribo")],
        54.831,
        11.136
    ),
    muni!(
        370,
        "Næstved",
        Sjaelland,
        84,
        [("4700", "Næstved")],
        55.230,
        11.760
    ),
    muni!(
        376,
        "Guldborgsund",
        Sjaelland,
        60,
        [("4800", "Nykøbing F"), ("4880", "Nysted")],
        54.769,
        11.874
    ),
    muni!(
        390,
        "Vordingborg",
        Sjaelland,
        45,
        [("4760", "Vordingborg")],
        55.008,
        11.911
    ),
    // Region Syddanmark (1083)
    muni!(
        410,
        "Middelfart",
        Syddanmark,
        39,
        [("5500", "Middelfart")],
        55.506,
        9.730
    ),
    muni!(
        430,
        "Faaborg-Midtfyn",
        Syddanmark,
        52,
        [("5600", "Faaborg"), ("5750", "Ringe")],
        55.095,
        10.242
    ),
    muni!(
        450,
        "Nyborg",
        Syddanmark,
        32,
        [("5800", "Nyborg")],
        55.312,
        10.790
    ),
    muni!(
        461,
        "Odense",
        Syddanmark,
        210,
        [
            ("5000", "Odense C"),
            ("5200", "Odense V"),
            ("5210", "Odense NV"),
            ("5220", "Odense SØ"),
            ("5230", "Odense M"),
            ("5250", "Odense SV")
        ],
        55.396,
        10.388
    ),
    muni!(
        479,
        "Svendborg",
        Syddanmark,
        59,
        [("5700", "Svendborg")],
        55.060,
        10.607
    ),
    muni!(
        510,
        "Haderslev",
        Syddanmark,
        56,
        [("6100", "Haderslev")],
        55.250,
        9.488
    ),
    muni!(
        540,
        "Sønderborg",
        Syddanmark,
        74,
        [("6400", "Sønderborg"), ("6430", "Nordborg")],
        54.909,
        9.792
    ),
    muni!(
        550,
        "Tønder",
        Syddanmark,
        37,
        [("6270", "Tønder")],
        54.933,
        8.867
    ),
    muni!(
        561,
        "Esbjerg",
        Syddanmark,
        116,
        [
            ("6700", "Esbjerg"),
            ("6705", "Esbjerg Ø"),
            ("6710", "Esbjerg V"),
            ("6715", "Esbjerg N")
        ],
        55.476,
        8.459
    ),
    muni!(
        573,
        "Varde",
        Syddanmark,
        50,
        [("6800", "Varde")],
        55.620,
        8.481
    ),
    muni!(
        580,
        "Aabenraa",
        Syddanmark,
        58,
        [("6200", "Aabenraa")],
        55.044,
        9.419
    ),
    muni!(
        607,
        "Fredericia",
        Syddanmark,
        52,
        [("7000", "Fredericia")],
        55.566,
        9.753
    ),
    muni!(
        621,
        "Kolding",
        Syddanmark,
        95,
        [("6000", "Kolding")],
        55.490,
        9.472
    ),
    muni!(
        630,
        "Vejle",
        Syddanmark,
        121,
        [("7100", "Vejle")],
        55.709,
        9.536
    ),
    // Region Midtjylland (1082)
    muni!(
        615,
        "Horsens",
        Midtjylland,
        99,
        [("8700", "Horsens")],
        55.861,
        9.850
    ),
    muni!(
        657,
        "Herning",
        Midtjylland,
        90,
        [("7400", "Herning")],
        56.139,
        8.974
    ),
    muni!(
        661,
        "Holstebro",
        Midtjylland,
        59,
        [("7500", "Holstebro")],
        56.360,
        8.616
    ),
    muni!(
        707,
        "Norddjurs",
        Midtjylland,
        37,
        [("8500", "Grenaa")],
        56.416,
        10.878
    ),
    muni!(
        710,
        "Favrskov",
        Midtjylland,
        49,
        [("8370", "Hadsten"), ("8382", "Hinnerup")],
        56.266,
        10.064
    ),
    muni!(
        730,
        "Randers",
        Midtjylland,
        100,
        [("8900", "Randers C"), ("8920", "Randers NV")],
        56.461,
        10.036
    ),
    muni!(
        740,
        "Silkeborg",
        Midtjylland,
        99,
        [("8600", "Silkeborg")],
        56.170,
        9.545
    ),
    muni!(
        746,
        "Skanderborg",
        Midtjylland,
        64,
        [("8660", "Skanderborg")],
        56.034,
        9.931
    ),
    muni!(
        751,
        "Aarhus",
        Midtjylland,
        370,
        [
            ("8000", "Aarhus C"),
            ("8200", "Aarhus N"),
            ("8210", "Aarhus V"),
            ("8220", "Brabrand"),
            ("8230", "Åbyhøj"),
            ("8240", "Risskov"),
            ("8260", "Viby J"),
            ("8270", "Højbjerg")
        ],
        56.157,
        10.211
    ),
    muni!(
        756,
        "Ikast-Brande",
        Midtjylland,
        42,
        [("7430", "Ikast"), ("7330", "Brande")],
        56.139,
        9.158
    ),
    muni!(
        760,
        "Ringkøbing-Skjern",
        Midtjylland,
        56,
        [("6950", "Ringkøbing"), ("6900", "Skjern")],
        56.090,
        8.244
    ),
    muni!(
        766,
        "Hedensted",
        Midtjylland,
        47,
        [("8722", "Hedensted")],
        55.771,
        9.701
    ),
    muni!(
        779,
        "Skive",
        Midtjylland,
        46,
        [("7800", "Skive")],
        56.567,
        9.027
    ),
    muni!(
        791,
        "Viborg",
        Midtjylland,
        98,
        [("8800", "Viborg")],
        56.453,
        9.402
    ),
    // Region Nordjylland (1081)
    muni!(
        773,
        "Morsø",
        Nordjylland,
        20,
        [("7900", "Nykøbing M")],
        56.795,
        8.859
    ),
    muni!(
        787,
        "Thisted",
        Nordjylland,
        43,
        [("7700", "Thisted")],
        56.955,
        8.695
    ),
    muni!(
        810,
        "Brønderslev",
        Nordjylland,
        37,
        [("9700", "Brønderslev")],
        57.270,
        9.941
    ),
    muni!(
        813,
        "Frederikshavn",
        Nordjylland,
        59,
        [("9900", "Frederikshavn"), ("9990", "Skagen")],
        57.441,
        10.537
    ),
    muni!(
        820,
        "Vesthimmerlands",
        Nordjylland,
        36,
        [("9600", "Aars")],
        56.803,
        9.518
    ),
    muni!(
        840,
        "Rebild",
        Nordjylland,
        31,
        [("9530", "Støvring"), ("9520", "Skørping")],
        56.886,
        9.837
    ),
    muni!(
        846,
        "Mariagerfjord",
        Nordjylland,
        42,
        [("9500", "Hobro")],
        56.639,
        9.792
    ),
    muni!(
        849,
        "Jammerbugt",
        Nordjylland,
        39,
        [("9440", "Aabybro"), ("9490", "Pandrup")],
        57.162,
        9.731
    ),
    muni!(
        851,
        "Aalborg",
        Nordjylland,
        222,
        [
            ("9000", "Aalborg"),
            ("9200", "Aalborg SV"),
            ("9210", "Aalborg SØ"),
            ("9220", "Aalborg Øst"),
            ("9400", "Nørresundby")
        ],
        57.048,
        9.919
    ),
    muni!(
        860,
        "Hjørring",
        Nordjylland,
        64,
        [("9800", "Hjørring")],
        57.464,
        9.982
    ),
];

/// The municipality with the given official code, if it is listed.
pub fn municipality(code: u16) -> Option<&'static Municipality> {
    MUNICIPALITIES.iter().find(|m| m.code == code)
}

/// Street names that exist in most Danish towns.
pub const STREETS: &[&str] = &[
    "Vestergade",
    "Østergade",
    "Nørregade",
    "Søndergade",
    "Storegade",
    "Nygade",
    "Kirkevej",
    "Skolevej",
    "Møllevej",
    "Stationsvej",
    "Engvej",
    "Skovvej",
    "Bakkevej",
    "Birkevej",
    "Egevej",
    "Lindevej",
    "Ahornvej",
    "Rosenvej",
    "Kastanievej",
    "Bøgevej",
    "Toftevej",
    "Havnegade",
    "Torvegade",
    "Jernbanegade",
    "Bygaden",
    "Parkvej",
    "Solvænget",
    "Strandvejen",
    "Markvej",
    "Grønnegade",
    "Fasanvej",
    "Lærkevej",
    "Vibevej",
    "Poppelvej",
    "Tjørnevej",
    "Holmevej",
];
