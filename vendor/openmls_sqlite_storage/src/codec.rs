use serde::Serialize;

pub trait Codec: Default {
    type Error: std::error::Error + std::fmt::Debug + Send + Sync + 'static;

    fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error>;
    /// Encodes a stored value (never a key: keys are looked up by their
    /// bytes, so their encoding must not change). The same as [`Self::to_vec`]
    /// unless a codec has a better form for values that still decodes with
    /// [`Self::from_slice`]. (Pouch's patch.)
    fn entity_to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        Self::to_vec(value)
    }
    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error>;
}
