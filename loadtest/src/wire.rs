//! The request/response frames spoken between the generator and the backends, over TCP and UDP.
//!
//! Fixed 16-byte frames: no parsing cost on either side, and a response says which backend
//! served it, so per-backend shares are measured from the replies themselves — which is what
//! makes the external mode work where the scheduler's own counters are out of reach.
//!
//! request:  magic "TPLQ" (4) · reserved (4) · request id (8, little endian)
//! response: magic "TPLR" (4) · backend index (4, LE) · request id (8, LE)

pub const FRAME: usize = 16;
const REQUEST_MAGIC: [u8; 4] = *b"TPLQ";
const RESPONSE_MAGIC: [u8; 4] = *b"TPLR";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic {0:02x?}: not a tpvs-loadtest peer")]
    Magic([u8; 4]),
    #[error("short frame: {0} bytes")]
    Short(usize),
}

pub fn request(id: u64) -> [u8; FRAME] {
    let mut f = [0u8; FRAME];
    f[..4].copy_from_slice(&REQUEST_MAGIC);
    f[8..].copy_from_slice(&id.to_le_bytes());
    f
}

pub fn response(backend: u32, id: u64) -> [u8; FRAME] {
    let mut f = [0u8; FRAME];
    f[..4].copy_from_slice(&RESPONSE_MAGIC);
    f[4..8].copy_from_slice(&backend.to_le_bytes());
    f[8..].copy_from_slice(&id.to_le_bytes());
    f
}

/// The request id of a request frame.
pub fn parse_request(buf: &[u8]) -> Result<u64, FrameError> {
    let (magic, id) = split(buf)?;
    if magic != REQUEST_MAGIC {
        return Err(FrameError::Magic(magic));
    }
    Ok(id)
}

/// (backend index, request id) of a response frame.
pub fn parse_response(buf: &[u8]) -> Result<(u32, u64), FrameError> {
    let (magic, id) = split(buf)?;
    if magic != RESPONSE_MAGIC {
        return Err(FrameError::Magic(magic));
    }
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[4..8]);
    Ok((u32::from_le_bytes(b), id))
}

fn split(buf: &[u8]) -> Result<([u8; 4], u64), FrameError> {
    let Some(frame) = buf.get(..FRAME) else { return Err(FrameError::Short(buf.len())) };
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&frame[..4]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&frame[8..FRAME]);
    Ok((magic, u64::from_le_bytes(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(parse_request(&request(42)), Ok(42));
        assert_eq!(parse_response(&response(7, 42)), Ok((7, 42)));
        assert!(matches!(parse_response(&request(1)), Err(FrameError::Magic(_))));
        assert_eq!(parse_request(&[0u8; 3]), Err(FrameError::Short(3)));
    }
}
