//! Plausible Danish given and family names for the synthetic population.
//!
//! Given names are split by sex and by birth cohort (born before 1970 or
//! later), because Danish naming fashions changed a lot; a few names common
//! among Danes of immigrant background are included. Family names carry a
//! weight roughly proportional to their frequency in Denmark (Danmarks
//! Statistik, number of bearers in thousands), so the -sen names dominate as
//! they do in reality.

/// Female given names common among Danes born before 1970.
pub const FEMALE_OLDER: &[&str] = &[
    "Kirsten", "Hanne", "Inge", "Karen", "Bente", "Lone", "Susanne", "Jytte", "Birgit", "Lis",
    "Ruth", "Else", "Grethe", "Ingrid", "Marianne", "Anne", "Helle", "Gitte", "Jette", "Merete",
    "Lene", "Annette", "Ulla", "Tove", "Pia", "Dorte", "Vibeke",
];

/// Female given names common among Danes born 1970 or later.
pub const FEMALE_YOUNGER: &[&str] = &[
    "Mette",
    "Camilla",
    "Louise",
    "Maria",
    "Julie",
    "Sofie",
    "Emma",
    "Ida",
    "Laura",
    "Anna",
    "Cecilie",
    "Sara",
    "Line",
    "Mathilde",
    "Freja",
    "Katrine",
    "Christina",
    "Emilie",
    "Nanna",
    "Stine",
    "Maja",
    "Amalie",
    "Fatima",
    "Signe",
];

/// Male given names common among Danes born before 1970.
pub const MALE_OLDER: &[&str] = &[
    "Jens", "Niels", "Hans", "Jørgen", "Peter", "Poul", "Erik", "Ole", "Bent", "Knud", "Per",
    "Svend", "Henning", "Leif", "John", "Finn", "Carsten", "Flemming", "Preben", "Kurt", "Kim",
    "Søren", "Lars", "Jan", "Bjarne", "Torben",
];

/// Male given names common among Danes born 1970 or later.
pub const MALE_YOUNGER: &[&str] = &[
    "Mads",
    "Rasmus",
    "Frederik",
    "Mathias",
    "Christian",
    "Martin",
    "Thomas",
    "Michael",
    "Mikkel",
    "Jesper",
    "Morten",
    "Kasper",
    "Anders",
    "Jakob",
    "Nikolaj",
    "Simon",
    "Emil",
    "Jonas",
    "Oliver",
    "Lucas",
    "Magnus",
    "Alexander",
    "Daniel",
    "Mohammad",
    "Ali",
];

/// Family names with weights (approximate number of bearers in thousands).
pub const FAMILY: &[(&str, f64)] = &[
    ("Nielsen", 240.0),
    ("Jensen", 240.0),
    ("Hansen", 205.0),
    ("Andersen", 180.0),
    ("Pedersen", 155.0),
    ("Christensen", 115.0),
    ("Larsen", 110.0),
    ("Sørensen", 105.0),
    ("Rasmussen", 90.0),
    ("Jørgensen", 85.0),
    ("Petersen", 75.0),
    ("Madsen", 60.0),
    ("Kristensen", 60.0),
    ("Olsen", 50.0),
    ("Thomsen", 40.0),
    ("Christiansen", 38.0),
    ("Poulsen", 33.0),
    ("Johansen", 32.0),
    ("Møller", 31.0),
    ("Mortensen", 30.0),
    ("Knudsen", 25.0),
    ("Jakobsen", 24.0),
    ("Mikkelsen", 22.0),
    ("Olesen", 21.0),
    ("Frederiksen", 20.0),
    ("Laursen", 19.0),
    ("Henriksen", 19.0),
    ("Lund", 18.0),
    ("Jacobsen", 17.0),
    ("Schmidt", 16.0),
    ("Eriksen", 15.0),
    ("Holm", 15.0),
    ("Kristiansen", 14.0),
    ("Clausen", 14.0),
    ("Simonsen", 13.0),
    ("Svendsen", 13.0),
    ("Andreasen", 12.0),
    ("Iversen", 11.0),
    ("Jeppesen", 11.0),
    ("Vestergaard", 11.0),
    ("Mogensen", 10.0),
    ("Nissen", 10.0),
    ("Lauridsen", 10.0),
    ("Kjær", 10.0),
    ("Jespersen", 10.0),
    ("Østergaard", 9.0),
    ("Jepsen", 9.0),
    ("Ahmed", 6.0),
    ("Ali", 5.0),
    ("Yilmaz", 4.0),
    ("Hussein", 3.0),
    ("Nguyen", 3.0),
];
