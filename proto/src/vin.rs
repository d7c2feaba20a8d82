//! A vehicle identification number (ISO 3779): the identity a car's certificate carries.

use std::fmt;
use std::str::FromStr;

/// A Vehicle Identification Number (ISO 3779): the identity of one car, one certificate.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vin(String);

/// Why a string is not a VIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VinError {
    /// A VIN has exactly 17 characters.
    #[error("a VIN has 17 characters, {0:?} has {1}")]
    Length(String, usize),
    /// ISO 3779 allows digits and capital letters other than I, O and Q.
    #[error("{0:?} is not a VIN: {1:?} at position {2} is not allowed (digits and capital letters except I, O, Q)")]
    Character(String, char, usize),
}

impl Vin {
    /// Validates `s` as a VIN.
    pub fn parse(s: &str) -> Result<Vin, VinError> {
        let count = s.chars().count();
        if count != 17 {
            return Err(VinError::Length(s.to_owned(), count));
        }
        if let Some((i, c)) = s
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_digit() || c.is_ascii_uppercase()) || matches!(c, 'I' | 'O' | 'Q'))
        {
            return Err(VinError::Character(s.to_owned(), c, i + 1));
        }
        Ok(Vin(s.to_owned()))
    }

    /// The VIN as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A well-formed VIN for examples and tests (the shape of a BMW's), not a car of any fleet.
    pub fn example() -> Vin {
        Vin("WBA3B5C50DF123456".to_owned())
    }
}

impl FromStr for Vin {
    type Err = VinError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Vin::parse(s)
    }
}

impl fmt::Display for Vin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Vin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vin({})", self.0)
    }
}

impl AsRef<str> for Vin {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_real_vin() {
        assert_eq!(Vin::parse("WBA3B5C50DF123456").unwrap().as_str(), "WBA3B5C50DF123456");
    }

    #[test]
    fn refuses_wrong_length() {
        assert!(matches!(Vin::parse("WBA3B5C50DF12345"), Err(VinError::Length(_, 16))));
        assert!(matches!(Vin::parse(""), Err(VinError::Length(_, 0))));
    }

    #[test]
    fn refuses_i_o_q_and_lowercase_and_symbols() {
        for (bad, c) in [
            ("WBA3B5C50DF12345I", 'I'),
            ("WBA3B5C50DF12345O", 'O'),
            ("WBA3B5C50DF12345Q", 'Q'),
            ("wBA3B5C50DF123456", 'w'),
            ("WBA3B5C50DF12345/", '/'),
        ] {
            match Vin::parse(bad) {
                Err(VinError::Character(_, got, _)) => assert_eq!(got, c),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_topic_wildcards() {
        assert!(Vin::parse("WBA3B5C50DF12345+").is_err());
        assert!(Vin::parse("WBA3B5C50DF12345#").is_err());
    }
}
