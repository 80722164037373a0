//! Syntax checks for codes of the known systems, so that codes that merely *claim* a system (OpenMRS concept
//! ids labelled as LOINC or SNOMED CT, as in the `Lanell756` robustness bundle) are reported instead of
//! passed on as if they were real.
//!
//! The syntax check decides whether a code is used. Check digits (LOINC mod 10, SNOMED CT Verhoeff) only add
//! a [`Note`](super::Note): real exports carry codes with wrong check digits (Synthea's
//! `10939881000119104`) that still mean what they say.

use super::CodeSystem;

/// The verdict on one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeCheck {
    /// Well-formed for its system.
    Valid,
    /// Well-formed, but its check digit is wrong.
    BadCheckDigit,
    /// Not a code of its system at all.
    Invalid,
}

/// Checks `code` against `system`. Codes of [`CodeSystem::Other`] are never checked.
pub(crate) fn check(system: &CodeSystem, code: &str) -> CodeCheck {
    match system {
        CodeSystem::Loinc => check_loinc(code),
        CodeSystem::Snomed => check_snomed(code),
        CodeSystem::RxNorm => {
            if (1..=10).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit()) {
                CodeCheck::Valid
            } else {
                CodeCheck::Invalid
            }
        }
        CodeSystem::AppleHealthKit => {
            if code.starts_with("HK")
                && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                CodeCheck::Valid
            } else {
                CodeCheck::Invalid
            }
        }
        CodeSystem::Other(_) => CodeCheck::Valid,
    }
}

/// LOINC: 1 to 7 digits, a hyphen, one check digit (mod 10, as LOINC's own documentation describes).
pub(crate) fn check_loinc(code: &str) -> CodeCheck {
    let Some((body, check_digit)) = code.split_once('-') else {
        return CodeCheck::Invalid;
    };
    let body_ok = (1..=7).contains(&body.len()) && body.bytes().all(|b| b.is_ascii_digit());
    let check_ok = check_digit.len() == 1 && check_digit.bytes().all(|b| b.is_ascii_digit());
    if !body_ok || !check_ok {
        return CodeCheck::Invalid;
    }
    // Double every other digit starting from the rightmost, sum the digits, complement to 10.
    let mut sum = 0u32;
    for (i, b) in body.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    let expected = (10 - sum % 10) % 10;
    let given = check_digit.bytes().next().map(|b| u32::from(b - b'0'));
    if given == Some(expected) {
        CodeCheck::Valid
    } else {
        CodeCheck::BadCheckDigit
    }
}

/// SNOMED CT concept ids: 6 to 18 digits, no leading zero, a concept partition identifier (`00` short form,
/// `10` extension), and a Verhoeff check digit.
pub(crate) fn check_snomed(code: &str) -> CodeCheck {
    let bytes = code.as_bytes();
    if !(6..=18).contains(&bytes.len()) || !bytes.iter().all(u8::is_ascii_digit) || bytes[0] == b'0'
    {
        return CodeCheck::Invalid;
    }
    let partition = &bytes[bytes.len() - 3..bytes.len() - 1];
    if partition != b"00" && partition != b"10" {
        return CodeCheck::Invalid;
    }
    if verhoeff_valid(bytes) {
        CodeCheck::Valid
    } else {
        CodeCheck::BadCheckDigit
    }
}

/// Verhoeff's dihedral check over ASCII digits, the last being the check digit.
fn verhoeff_valid(digits: &[u8]) -> bool {
    const D: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    // Verhoeff's permutation for position i is P1 applied i times (position counted from the right, mod 8);
    // applying it rather than typing out the 8x10 table rules out transcription errors.
    const P1: [u8; 10] = [1, 5, 7, 6, 2, 8, 3, 0, 9, 4];
    let mut c = 0u8;
    for (i, b) in digits.iter().rev().enumerate() {
        let mut permuted = b - b'0';
        for _ in 0..i % 8 {
            permuted = P1[usize::from(permuted)];
        }
        c = D[usize::from(c)][usize::from(permuted)];
    }
    c == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loinc_codes_from_the_test_data() {
        for code in [
            "4548-4", "8480-6", "8462-4", "85354-9", "85353-1", "55284-4", "72166-2", "2339-0",
        ] {
            assert_eq!(check_loinc(code), CodeCheck::Valid, "{code}");
        }
        assert_eq!(check_loinc("4548-5"), CodeCheck::BadCheckDigit);
        assert_eq!(
            check_loinc("5089AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            CodeCheck::Invalid
        );
        assert_eq!(check_loinc("QALY"), CodeCheck::Invalid);
        assert_eq!(check_loinc("-4"), CodeCheck::Invalid);
    }

    #[test]
    fn snomed_codes() {
        for code in [
            "138875005",
            "22298006",
            "44054006",
            "430193006",
            "10939881000119105",
            "53741008",
        ] {
            assert_eq!(check_snomed(code), CodeCheck::Valid, "{code}");
        }
        // Synthea's "Unhealthy alcohol drinking behavior": well-formed, wrong check digit.
        assert_eq!(check_snomed("10939881000119104"), CodeCheck::BadCheckDigit);
        assert_eq!(
            check_snomed("112141AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            CodeCheck::Invalid
        );
        assert_eq!(check_snomed("012345"), CodeCheck::Invalid);
    }
}
