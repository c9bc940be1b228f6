import CZeroMQ
import Foundation

/// A key file, authorized-keys file or CURVE setting that cannot be used, naming the file (and
/// line) at fault.
public struct CurveKeyFileError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The file, as given by the user.
    public let file: String
    /// 1-based line of the problem, when it is on one line.
    public let line: Int?
    public let message: String

    public init(file: String, line: Int? = nil, _ message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    public var description: String { line.map { "\(file):\($0): \(message)" } ?? "\(file): \(message)" }
}

/// Whether the installed libzmq can do CurveZMQ (it needs libsodium or its bundled tweetnacl).
public enum CurveSupport {
    /// `zmq_has("curve")`.
    public static var isAvailable: Bool { zmq_has("curve") == 1 }

    /// Throws a message saying what to install when CURVE is missing.
    public static func requireAvailable() throws {
        guard isAvailable else {
            var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
            zmq_version(&major, &minor, &patch)
            throw CurveKeyFileError(file: "libzmq \(major).\(minor).\(patch)",
                                    "this libzmq was built without CURVE security (zmq_has(\"curve\") is false); "
                                        + "install a libzmq built with libsodium (Debian/Ubuntu: libzmq5 and libzmq3-dev) to use --curve-* options")
        }
    }
}

/// One 32-byte Curve25519 key, public or secret, in its 40-character Z85 text form.
///
/// Equality and hashing use the key's bytes (through its canonical Z85 text).
public struct CurveKey: Hashable, Sendable, CustomStringConvertible {
    /// The 40-character Z85 text.
    public let z85: String
    /// The 32 raw bytes (what libzmq's socket options and ZAP credentials carry).
    public let bytes: [UInt8]

    /// Z85's 85 characters in digit order (ZeroMQ RFC 32).
    private static let alphabetOrder = Array("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
    static let alphabet = Set(alphabetOrder)

    /// Why `text` is not a Z85 key, or nil when it is one.
    public static func problem(with text: String) -> String? {
        guard text.count == 40 else { return "a CURVE key is 40 Z85 characters, got \(text.count)" }
        if let bad = text.enumerated().first(where: { !alphabet.contains($0.element) }) {
            return "'\(bad.element)' at position \(bad.offset + 1) is not a Z85 character"
        }
        // Each group of 5 digits encodes 4 bytes; some (e.g. "#####") exceed 2³² − 1, and not
        // every libzmq version rejects them.
        let digits = text.map { Self.digits[$0]! }
        for group in stride(from: 0, to: 40, by: 5) where digits[group..<(group + 5)].reduce(UInt64(0), { $0 * 85 + $1 }) > UInt64(UInt32.max) {
            return "not a valid Z85 encoding of 32 bytes (characters \(group + 1)–\(group + 5) exceed 32 bits)"
        }
        var bytes = [UInt8](repeating: 0, count: 32)
        guard text.withCString({ zmq_z85_decode(&bytes, $0) }) != nil else { return "not a valid Z85 encoding of 32 bytes" }
        return nil
    }

    /// Z85 character → its digit value.
    private static let digits: [Character: UInt64] = Dictionary(uniqueKeysWithValues: zip(alphabetOrder, 0...))

    /// The key of a 40-character Z85 text, or nil (see `problem(with:)` for why).
    public init?(z85 text: String) {
        guard Self.problem(with: text) == nil else { return nil }
        var bytes = [UInt8](repeating: 0, count: 32)
        _ = text.withCString { zmq_z85_decode(&bytes, $0) }
        self.z85 = text
        self.bytes = bytes
    }

    /// The key of 32 raw bytes (e.g. a ZAP request's CURVE credentials), or nil for another length.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 32 else { return nil }
        var text = [CChar](repeating: 0, count: 41)
        guard zmq_z85_encode(&text, bytes, 32) != nil else { return nil }
        self.z85 = String(cString: text)
        self.bytes = bytes
    }

    public static func == (lhs: CurveKey, rhs: CurveKey) -> Bool { lhs.bytes == rhs.bytes }
    public func hash(into hasher: inout Hasher) { hasher.combine(bytes) }

    public var description: String { z85 }
}

/// A CurveZMQ identity: a public key and, unless it was read from a public-only `.pub` file,
/// its secret key.
///
/// Key file format (text, UTF-8, one `field = value` per line, `#` starts a comment line):
/// ```
/// # Sura CurveZMQ key pair "server"
/// public-key = <40 Z85 characters>
/// secret-key = <40 Z85 characters>
/// ```
/// `NAME.key` holds both lines (mode 0600); `NAME.pub` holds only `public-key` and is what gets
/// distributed. When both lines are present the public key must be the secret key's; a file with
/// only `secret-key` is accepted and the public key derived from it.
public struct CurveKeyPair: Sendable, Equatable, CustomStringConvertible {
    public let publicKey: CurveKey
    /// Nil for a public-only file.
    public let secretKey: CurveKey?

    /// A public-only identity (a peer's `.pub`).
    public init(publicKey: CurveKey) {
        self.publicKey = publicKey
        self.secretKey = nil
    }

    /// The identity of a secret key, with its public key derived by libzmq.
    public init(secretKey: CurveKey) throws {
        try CurveSupport.requireAvailable()
        var text = [CChar](repeating: 0, count: 41)
        guard secretKey.z85.withCString({ zmq_curve_public(&text, $0) }) == 0, let derived = CurveKey(z85: String(cString: text)) else {
            throw ZMQError.last("zmq_curve_public")
        }
        self.publicKey = derived
        self.secretKey = secretKey
    }

    /// A fresh random key pair (`zmq_curve_keypair`).
    public static func generate() throws -> CurveKeyPair {
        try CurveSupport.requireAvailable()
        var publicText = [CChar](repeating: 0, count: 41), secretText = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&publicText, &secretText) == 0 else { throw ZMQError.last("zmq_curve_keypair") }
        guard let secret = CurveKey(z85: String(cString: secretText)) else { throw ZMQError(operation: "zmq_curve_keypair", code: EINVAL) }
        return try CurveKeyPair(secretKey: secret)
    }

    /// The secret key, or an error naming `file` when this identity came from a public-only file.
    public func requireSecret(file: String) throws -> CurveKey {
        guard let secretKey else {
            throw CurveKeyFileError(file: file, "has no secret-key line: this is a public key file (.pub); give the .key file holding the secret key")
        }
        return secretKey
    }

    public var description: String { "CURVE key \(publicKey.z85)\(secretKey == nil ? " (public only)" : "")" }

    // MARK: Reading

    /// Reads a key file (`.key` or `.pub`).
    public static func load(contentsOf url: URL, as name: String? = nil) throws -> CurveKeyPair {
        try parse(try readText(url, as: name), file: name ?? url.path)
    }

    /// Parses key file text; `file` names the file in errors.
    public static func parse(_ text: String, file: String) throws -> CurveKeyPair {
        var values: [String: (key: CurveKey, line: Int)] = [:]
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let equals = line.firstIndex(of: "=") else {
                throw CurveKeyFileError(file: file, line: index + 1, "expected 'public-key = …' or 'secret-key = …', got '\(Self.excerpt(line))'")
            }
            let field = line[..<equals].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            guard field == "public-key" || field == "secret-key" else {
                throw CurveKeyFileError(file: file, line: index + 1, "unknown field '\(Self.excerpt(field))'; a key file has public-key and secret-key")
            }
            if let earlier = values[field] {
                throw CurveKeyFileError(file: file, line: index + 1, "\(field) appears twice (first on line \(earlier.line))")
            }
            if let problem = CurveKey.problem(with: value) {
                throw CurveKeyFileError(file: file, line: index + 1, "\(field): \(problem)")
            }
            values[field] = (CurveKey(z85: value)!, index + 1)
        }
        switch (values["public-key"], values["secret-key"]) {
        case (nil, nil):
            throw CurveKeyFileError(file: file, "no public-key or secret-key line; is this a Sura key file (sura keys generate)?")
        case let (publicKey?, nil):
            return CurveKeyPair(publicKey: publicKey.key)
        case let (publicKey, secretKey?):
            let pair = try CurveKeyPair(secretKey: secretKey.key)
            if let publicKey, publicKey.key != pair.publicKey {
                throw CurveKeyFileError(file: file, line: publicKey.line,
                                        "public-key is not the public key of the secret-key on line \(secretKey.line) (expected \(pair.publicKey.z85))")
            }
            return pair
        }
    }

    /// The file's text, or an error naming it.
    static func readText(_ url: URL, as name: String?) throws -> String {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            let reason = FileManager.default.fileExists(atPath: url.path) ? "cannot be read" : "does not exist"
            throw CurveKeyFileError(file: name ?? url.path, reason)
        }
        guard let text = String(data: data, encoding: .utf8) else { throw CurveKeyFileError(file: name ?? url.path, "is not UTF-8 text") }
        return text
    }

    static func excerpt(_ text: String) -> String { text.count > 48 ? String(text.prefix(45)) + "…" : text }

    // MARK: Writing

    /// The text of the secret key file (both keys).
    public func keyFileText(name: String) throws -> String {
        let secret = try requireSecret(file: name)
        return """
            # Sura CurveZMQ key pair "\(name)", created \(ISO8601DateFormatter().string(from: Date())).
            # Keep this file secret (mode 0600); give out \(name).pub instead.
            public-key = \(publicKey.z85)
            secret-key = \(secret.z85)

            """
    }

    /// The text of the public key file.
    public func publicFileText(name: String) -> String {
        """
        # Sura CurveZMQ public key "\(name)", created \(ISO8601DateFormatter().string(from: Date())).
        # Safe to share: servers list it in --curve-authorized-keys, clients pass a server's as --curve-server-key.
        public-key = \(publicKey.z85)

        """
    }

    /// Writes `NAME.key` (mode 0600) and `NAME.pub` (mode 0644) into `directory`, creating it
    /// (mode 0700) if needed. Each file is written beside its final name and renamed into place,
    /// so a reader never sees half a key, and the secret file is never readable by others.
    @discardableResult
    public func write(directory: URL, name: String, overwrite: Bool = false) throws -> (secret: URL, public: URL) {
        let secretURL = directory.appendingPathComponent(name + ".key"), publicURL = directory.appendingPathComponent(name + ".pub")
        if !overwrite {
            for url in [secretURL, publicURL] where FileManager.default.fileExists(atPath: url.path) {
                throw CurveKeyFileError(file: url.path, "already exists; refusing to replace a key (remove it first, or overwrite on purpose)")
            }
        }
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw CurveKeyFileError(file: directory.path, "cannot create the directory: \(error.localizedDescription)")
        }
        try Self.writeFile(try keyFileText(name: name), to: secretURL, mode: 0o600)
        try Self.writeFile(publicFileText(name: name), to: publicURL, mode: 0o644)
        return (secretURL, publicURL)
    }

    private static func writeFile(_ text: String, to url: URL, mode: mode_t) throws {
        let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(getpid()).\(UUID().uuidString).tmp")
        let descriptor = open(temporary.path, O_WRONLY | O_CREAT | O_EXCL, mode)
        guard descriptor >= 0 else { throw CurveKeyFileError(file: url.path, "cannot be written: \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        var written = 0
        while written < bytes.count {
            let count = bytes.withUnsafeBytes { writeBytes(descriptor, $0.baseAddress! + written, bytes.count - written) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            written += count
        }
        // The umask may have narrowed the mode; the secret file must be exactly 0600.
        let ok = written == bytes.count && fchmod(descriptor, mode) == 0 && fsync(descriptor) == 0
        let reason = String(cString: strerror(errno))
        close(descriptor)
        guard ok, rename(temporary.path, url.path) == 0 else {
            unlink(temporary.path)
            throw CurveKeyFileError(file: url.path, "cannot be written: \(reason)")
        }
    }

    /// A warning when a file holding a secret key can be read by its group or others, else nil.
    public static func permissionWarning(for url: URL, as name: String? = nil) -> String? {
        var info = stat()
        guard stat(url.path, &info) == 0, info.st_mode & 0o077 != 0 else { return nil }
        return "\(name ?? url.path) holds a secret key but is readable by group or others (mode \(String(info.st_mode & 0o777, radix: 8))); run chmod 600 on it"
    }
}

/// The client public keys a CURVE server accepts: one Z85 public key per line.
///
/// Blank lines and lines starting with `#` are comments (no key starts with `#`: the first Z85
/// digit of a 32-bit group is at most 82, `%`, while `#` is 84). Text after the key, separated by
/// whitespace, is a label (`<key> gpu-node-3`). A `public-key = <key>` line is read too, so a
/// `.pub` file can be appended as it is (`cat worker.pub >> authorized_keys`). A `secret-key`
/// line is an error: secret keys never belong in this file.
public struct AuthorizedKeys: Sendable, Equatable {
    /// The file, as given by the user.
    public let file: String
    public let keys: Set<CurveKey>

    public init(file: String, keys: Set<CurveKey>) {
        self.file = file
        self.keys = keys
    }

    public static func load(contentsOf url: URL, as name: String? = nil) throws -> AuthorizedKeys {
        try parse(try CurveKeyPair.readText(url, as: name), file: name ?? url.path)
    }

    public static func parse(_ text: String, file: String) throws -> AuthorizedKeys {
        var keys = Set<CurveKey>()
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("secret-key") {
                throw CurveKeyFileError(file: file, line: index + 1, "a secret key does not belong in an authorized-keys file; list public keys only (the .pub files)")
            }
            if line.hasPrefix("public-key"), let equals = line.firstIndex(of: "=") {
                line = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            }
            let token = String(line.prefix { !$0.isWhitespace })
            if let problem = CurveKey.problem(with: token) {
                throw CurveKeyFileError(file: file, line: index + 1, "expected a Z85 public key: \(problem) in '\(CurveKeyPair.excerpt(token))'")
            }
            keys.insert(CurveKey(z85: token)!)
        }
        return AuthorizedKeys(file: file, keys: keys)
    }
}

/// POSIX `write`, reachable from `CurveKeyPair`, whose own `write` method would shadow it.
private func writeBytes(_ descriptor: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int { write(descriptor, bytes, count) }
