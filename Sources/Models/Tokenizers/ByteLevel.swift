/// GPT-2's reversible map from the 256 byte values to printable Unicode scalars, so that a
/// byte-level vocabulary can be stored as text: printable Latin-1 bytes (`!`…`~`, `¡`…`¬`,
/// `®`…`ÿ`) map to themselves, the other 68 bytes to U+0100, U+0101, … in byte order
/// (so the space 0x20 is `Ġ` U+0120 and the newline 0x0A is `Ċ` U+010A).
enum ByteLevel {
    /// `scalar[b]` is the scalar standing for byte `b`.
    static let scalarForByte: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable {
                table[b] = Unicode.Scalar(UInt32(b))!
            } else {
                table[b] = Unicode.Scalar(next)!
                next += 1
            }
        }
        return table
    }()

    /// The inverse of `scalarForByte`.
    static let byteForScalar: [Unicode.Scalar: UInt8] = {
        var map: [Unicode.Scalar: UInt8] = [:]
        for (b, s) in scalarForByte.enumerated() { map[s] = UInt8(b) }
        return map
    }()

    /// The byte-level symbols of `piece`'s UTF-8 encoding.
    static func symbols(of piece: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(piece.count)
        for s in piece {
            for b in s.utf8 { out.append(scalarForByte[Int(b)]) }
        }
        return out
    }

    /// Hugging Face's ByteLevel decoder: each token whose scalars are all byte symbols becomes
    /// those bytes, any other token (an added token such as "<|im_start|>" written in plain text,
    /// say) its own UTF-8; the concatenation is decoded with U+FFFD for every maximal invalid
    /// subsequence, like Rust's `String::from_utf8_lossy`.
    static func decode(_ tokens: [String]) -> String {
        var bytes: [UInt8] = []
        for token in tokens {
            var tokenBytes: [UInt8] = []
            tokenBytes.reserveCapacity(token.unicodeScalars.count)
            var allBytes = true
            for s in token.unicodeScalars {
                guard let b = byteForScalar[s] else {
                    allBytes = false
                    break
                }
                tokenBytes.append(b)
            }
            bytes.append(contentsOf: allBytes ? tokenBytes : Array(token.utf8))
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
