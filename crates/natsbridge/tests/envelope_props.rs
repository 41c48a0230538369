//! Properties of the envelope codec: every frame round-trips, and no input makes it panic.

use bytes::Bytes;
use natsbridge::envelope::{self, MsgType};
use proptest::prelude::*;

fn msg_type() -> impl Strategy<Value = MsgType> {
    (0u8..16).prop_map(|v| MsgType::from_u8(v).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn frames_round_trip(ty in msg_type(), payload in prop::collection::vec(any::<u8>(), 0..256), crc in any::<bool>()) {
        let data = envelope::encode(ty, &payload, crc);
        prop_assert_eq!(envelope::peek(&data), Ok(ty));
        prop_assert_eq!(envelope::decode(&data, ty).unwrap(), &payload[..]);
    }

    #[test]
    fn replication_responses_round_trip(epoch in any::<u64>(), hw in any::<i64>(), records in prop::collection::vec(any::<u8>(), 0..256)) {
        let data = envelope::encode_replication_response(epoch, hw, &records);
        let r = envelope::decode_replication_response(&data).unwrap();
        prop_assert_eq!((r.leader_epoch, r.high_watermark, &r.records[..]), (epoch, hw, &records[..]));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..64), ty in msg_type()) {
        natsbridge_decode_all(&data, ty);
    }

    #[test]
    fn mutated_frames_never_panic(ty in msg_type(), payload in prop::collection::vec(any::<u8>(), 0..64),
                                  at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let mut data = envelope::encode(ty, &payload, true).to_vec();
        let n = data.len();
        data[at % n] = byte;
        data.truncate(cut % (n + 1));
        natsbridge_decode_all(&data, ty);
        // With the CRC flag intact, a changed payload byte is always caught.
        if at % n >= 12 && cut % (n + 1) == n && byte != envelope::encode(ty, &payload, true)[at % n] {
            prop_assert!(envelope::decode(&data, ty).is_err());
        }
    }
}

fn natsbridge_decode_all(data: &[u8], ty: MsgType) {
    let _ = envelope::peek(data);
    let _ = envelope::decode(data, ty);
    let _ = envelope::decode_replication_response(&Bytes::copy_from_slice(data));
}
