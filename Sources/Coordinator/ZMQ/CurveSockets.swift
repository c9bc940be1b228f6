import CZeroMQ
import Foundation

/// The CURVE settings of a server (the scheduler's front end and back end).
///
/// Every connection is encrypted with the server's key pair. Clients are then checked by a ZAP
/// handler: with `authorizedKeysFile`, only the keys it lists (plus `alwaysAllowed` and the
/// server's own public key) are accepted; without it, any client that knows the server's public
/// key is (encryption without authentication).
public struct CurveServerSecurity: Sendable {
    /// The server's identity; must hold the secret key.
    public var keyPair: CurveKeyPair
    /// The authorized-keys file (see `AuthorizedKeys`), re-read when it changes.
    public var authorizedKeysFile: URL?
    /// Client keys accepted whatever the file says. The server's own public key always is, so
    /// the process's own gateway and the local workers it starts can reuse the server's key pair.
    public var alwaysAllowed: Set<CurveKey>

    public init(keyPair: CurveKeyPair, authorizedKeysFile: URL? = nil, alwaysAllowed: Set<CurveKey> = []) {
        self.keyPair = keyPair
        self.authorizedKeysFile = authorizedKeysFile
        self.alwaysAllowed = alwaysAllowed
    }
}

/// The CURVE settings of a client (a worker, or a `SchedulerClient`): the server's public key
/// and the client's own key pair.
public struct CurveClientSecurity: Sendable, Equatable {
    public var serverKey: CurveKey
    /// The client's identity; must hold the secret key.
    public var keyPair: CurveKeyPair

    public init(serverKey: CurveKey, keyPair: CurveKeyPair) {
        self.serverKey = serverKey
        self.keyPair = keyPair
    }
}

extension ZMQSocket {
    /// Makes this socket a CURVE server (call before `bind`). Every handshake is passed to the
    /// ZAP handler of the socket's context, if one is bound, with `zapDomain` as its domain.
    public func makeCurveServer(keyPair: CurveKeyPair, zapDomain: String) throws {
        try CurveSupport.requireAvailable()
        let secret = try keyPair.requireSecret(file: "the server's key")
        try setOption(ZMQ_CURVE_SERVER, Int32(1))
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: Data(secret.bytes))
        try setOption(ZMQ_ZAP_DOMAIN, bytes: Data(zapDomain.utf8))
    }

    /// Makes this socket a CURVE client of the server with `security.serverKey` (call before `connect`).
    public func makeCurveClient(_ security: CurveClientSecurity) throws {
        try CurveSupport.requireAvailable()
        let secret = try security.keyPair.requireSecret(file: "the client's key")
        try setOption(ZMQ_CURVE_SERVERKEY, bytes: Data(security.serverKey.bytes))
        try setOption(ZMQ_CURVE_PUBLICKEY, bytes: Data(security.keyPair.publicKey.bytes))
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: Data(secret.bytes))
    }
}

/// Decides which CURVE client keys a server accepts: the authorized-keys file's, re-read when the
/// file changes (checked at most once a second; a file that no longer parses keeps the previous
/// list and is reported), plus the always-allowed keys.
///
/// Not thread-safe: the ZAP handler's thread is its only user.
public final class CurveAuthorizer: @unchecked Sendable {
    public enum Decision: Equatable, Sendable {
        case allowed
        case refused(reason: String)
    }

    public let authorizedKeysFile: URL?
    public let alwaysAllowed: Set<CurveKey>
    /// The list in force (nil without a file: every key is accepted).
    public private(set) var authorized: AuthorizedKeys?
    private var stamp: [Int]?
    private var nextCheck = -Double.infinity
    private let log: @Sendable (String) -> Void

    /// Reads the file now, so a malformed one stops the server before it listens.
    public init(authorizedKeysFile: URL?, alwaysAllowed: Set<CurveKey>, log: @escaping @Sendable (String) -> Void) throws {
        self.authorizedKeysFile = authorizedKeysFile
        self.alwaysAllowed = alwaysAllowed
        self.log = log
        if let authorizedKeysFile {
            stamp = Self.stamp(of: authorizedKeysFile)
            authorized = try AuthorizedKeys.load(contentsOf: authorizedKeysFile)
        }
    }

    public func decide(_ key: CurveKey, now: Double = MonotonicClock.now()) -> Decision {
        if alwaysAllowed.contains(key) { return .allowed }
        guard let file = authorizedKeysFile else { return .allowed }
        reloadIfChanged(now: now)
        return authorized?.keys.contains(key) == true ? .allowed : .refused(reason: "not listed in \(file.path)")
    }

    /// Re-reads the file if its inode, size or modification time changed.
    public func reloadIfChanged(now: Double) {
        guard let file = authorizedKeysFile, now >= nextCheck else { return }
        nextCheck = now + 1
        let current = Self.stamp(of: file)
        guard current != stamp else { return }
        stamp = current
        do {
            let reloaded = try AuthorizedKeys.load(contentsOf: file)
            log("curve: re-read \(file.path): \(reloaded.keys.count) authorized keys (was \(authorized?.keys.count ?? 0))")
            authorized = reloaded
        } catch {
            log("curve: \(error); keeping the previous \(authorized?.keys.count ?? 0) authorized keys")
        }
    }

    /// Inode, size and modification time in nanoseconds; nil when the file cannot be examined.
    private static func stamp(of url: URL) -> [Int]? {
        var info = stat()
        guard stat(url.path, &info) == 0 else { return nil }
        return [Int(info.st_ino), Int(info.st_size), Int(info.st_mtim.tv_sec), Int(info.st_mtim.tv_nsec)]
    }
}

/// Lets a repeated log line through at most once per `interval` seconds per key.
struct RateLimitedLog {
    let interval: Double
    private var entries: [String: (last: Double, suppressed: Int)] = [:]

    init(interval: Double) { self.interval = interval }

    /// Nil when the line is to be suppressed; otherwise how many were suppressed since it was last let through.
    mutating func permit(_ key: String, now: Double) -> Int? {
        if let entry = entries[key], now - entry.last < interval {
            entries[key]!.suppressed += 1
            return nil
        }
        if entries.count > 10_000 { entries = entries.filter { now - $0.value.last < interval } }
        let suppressed = entries[key]?.suppressed ?? 0
        entries[key] = (now, 0)
        return suppressed
    }

    static func suffix(_ suppressed: Int) -> String { suppressed > 0 ? " (\(suppressed) more times since the last report)" : "" }
}

/// The ZAP handler (ZeroMQ RFC 27) of one context: a REP socket on `inproc://zeromq.zap.01`, on
/// its own thread, that libzmq asks about every CURVE handshake of the context's server sockets.
/// It accepts the keys `authorizer` accepts and logs every refusal with the peer's address.
///
/// It must be bound before the server sockets accept connections; `stop()` (or releasing it)
/// closes its socket so the context can terminate.
final class ZAPHandler: @unchecked Sendable {
    static let endpoint = "inproc://zeromq.zap.01"
    private let stopFlag = StopFlag()
    private let thread: Thread

    init(context: ZMQContext, authorizer: CurveAuthorizer, log: @escaping @Sendable (String) -> Void) throws {
        let socket = try ZMQSocket(context: context, kind: .rep)
        do {
            try socket.bind(Self.endpoint)
        } catch let error as ZMQError {
            socket.close()
            throw ZMQError(operation: "zmq_bind \(Self.endpoint) (the ZAP handler; is another one running in this ZeroMQ context?)", code: error.code)
        }
        let flag = stopFlag
        thread = Thread { ZAPHandler.serve(socket: socket, authorizer: authorizer, stop: flag, log: log) }
        thread.start()
        thread.name = "sura-zap"
    }

    deinit { stop() }

    /// Stops the thread and closes the socket; handshakes still waiting for an answer fail.
    func stop() {
        stopFlag.set()
        while !thread.isFinished { usleep(1000) }
    }

    private static func serve(socket: ZMQSocket, authorizer: CurveAuthorizer, stop: StopFlag, log: @Sendable (String) -> Void) {
        defer { socket.close() }
        var refusals = RateLimitedLog(interval: 30)
        var announced = Set<String>()
        while !stop.isSet {
            // An error here is the context terminating (ETERM): nothing more will be asked.
            guard let readable = try? ZMQSocket.pollReadable([socket], timeout: 100) else { return }
            guard readable[0], let request = try? socket.receive(dontWait: true, maxFrames: 16, maxBytes: 1 << 16) else { continue }
            let reply = answer(request.frames, authorizer: authorizer, refusals: &refusals, announced: &announced, log: log)
            _ = try? socket.send(reply)
        }
    }

    /// The reply to one request: version, request id, status code, status text, user id, metadata.
    static func answer(_ frames: [Data], authorizer: CurveAuthorizer, refusals: inout RateLimitedLog, announced: inout Set<String>,
                       log: @Sendable (String) -> Void) -> [Data] {
        let requestID = frames.count > 1 ? frames[1] : Data()
        func reply(_ code: String, _ text: String, user: String = "") -> [Data] {
            [Data("1.0".utf8), requestID, Data(code.utf8), Data(text.utf8), Data(user.utf8), Data()]
        }
        func text(_ index: Int) -> String { index < frames.count ? String(decoding: frames[index], as: UTF8.self) : "" }
        guard frames.count >= 6, text(0) == "1.0" else { return reply("500", "malformed ZAP request") }
        let domain = text(2), address = text(3), mechanism = text(5)
        let now = MonotonicClock.now()
        guard mechanism == "CURVE", frames.count >= 7, let key = CurveKey(bytes: [UInt8](frames[6])) else {
            if let suppressed = refusals.permit("\(domain) \(mechanism) \(address)", now: now) {
                log("curve: \(domain): refused a \(mechanism) client from \(address): only CURVE clients are accepted" + RateLimitedLog.suffix(suppressed))
            }
            return reply("400", "only CURVE clients are accepted")
        }
        switch authorizer.decide(key, now: now) {
        case .allowed:
            if !authorizer.alwaysAllowed.contains(key), announced.insert("\(domain) \(key)").inserted {
                log("curve: \(domain): accepted client key \(key) from \(address)")
            }
            return reply("200", "OK", user: key.z85)
        case let .refused(reason):
            if let suppressed = refusals.permit("\(domain) \(key) \(address)", now: now) {
                log("curve: \(domain): refused client key \(key) from \(address): \(reason)" + RateLimitedLog.suffix(suppressed))
            }
            return reply("400", "client key not authorized")
        }
    }
}

/// Explains failed CURVE handshakes of a few sockets in words, from libzmq's socket monitor
/// events, each kind at most once per 30 s per socket (a refused peer retries every 100 ms).
///
/// A security mechanism mismatch is seen by whichever side reads the other's whole greeting
/// first; the other side only sees the connection close. So a server cannot always tell a peer
/// without CURVE, and workers watch their handshakes too (with or without CURVE).
///
/// Used by the thread that owns the sockets, which calls `reports` from its loop.
final class HandshakeDiagnostics {
    enum Role {
        /// The scheduler: refusals by key are the ZAP handler's to report, so only protocol failures are.
        case server
        /// A worker, with its CURVE settings or without (plain): everything, including a
        /// connection the server closed mid-handshake.
        case client(CurveClientSecurity?)
    }

    private struct Watched {
        var name: String
        weak var socket: ZMQSocket?
        var monitor: ZMQSocket
        var handshaking = false

        /// The watched socket's monitor is stopped before its reader closes (see `ZMQSocket.close`).
        func end() {
            socket?.stopMonitor()
            monitor.close()
        }
    }

    let role: Role
    private let context: ZMQContext
    private var watched: [Watched] = []
    private var limiter = RateLimitedLog(interval: 30)

    init(role: Role, context: ZMQContext) {
        self.role = role
        self.context = context
    }

    deinit { close() }

    /// Starts watching `socket` (before it binds or connects), replacing an earlier socket of the same name.
    func watch(_ socket: ZMQSocket, name: String) throws {
        forget(name)
        let address = "inproc://sura-handshake-monitor-\(UUID().uuidString)"
        var events = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
        if case .client = role { events |= ZMQ_EVENT_CONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED }
        try socket.startMonitor(address: address, events: events)
        let monitor = try ZMQSocket(context: context, kind: .pair)
        try monitor.connect(address)
        watched.append(Watched(name: name, socket: socket, monitor: monitor))
    }

    /// Stops watching the socket called `name`.
    func forget(_ name: String) {
        for entry in watched where entry.name == name { entry.end() }
        watched.removeAll { $0.name == name }
    }

    func close() {
        for entry in watched { entry.end() }
        watched.removeAll()
    }

    /// Sentences for the handshake failures seen since the last call.
    func reports(now: Double = MonotonicClock.now()) -> [String] {
        var lines: [String] = []
        for index in watched.indices {
            while let message = try? watched[index].monitor.receive(dontWait: true, maxFrames: 4, maxBytes: 4096) {
                guard message.frames.count >= 2, message.frames[0].count >= 6 else { continue }
                let (event, value): (Int32, UInt32) = message.frames[0].withUnsafeBytes {
                    (Int32($0.loadUnaligned(fromByteOffset: 0, as: UInt16.self)), $0.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
                }
                let endpoint = String(decoding: message.frames[1], as: UTF8.self)
                let name = watched[index].name
                var sentence: (key: String, text: String)?
                switch event {
                case ZMQ_EVENT_CONNECTED:
                    watched[index].handshaking = true
                case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
                    watched[index].handshaking = false
                case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL, ZMQ_EVENT_DISCONNECTED:
                    // A server that cannot decrypt a client's HELLO just hangs up. On the server side
                    // this is any client going away mid-handshake (refused ones included): not reported.
                    let wasHandshaking = watched[index].handshaking
                    watched[index].handshaking = false
                    if case let .client(security) = role, wasHandshaking || event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL {
                        sentence = ("closed", security == nil
                            ? "\(endpoint) closed the connection during the handshake: if the server uses CURVE, pass --curve-server-key and --curve-key"
                            : "\(endpoint) closed the connection during the CURVE handshake: is --curve-server-key the server's public key?")
                    }
                default:
                    watched[index].handshaking = false
                    sentence = describe(event: event, value: value, name: name, endpoint: endpoint).map { ("\(event) \(value)", $0) }
                }
                if let sentence, let suppressed = limiter.permit(name + " " + sentence.key, now: now) {
                    lines.append("curve: " + sentence.text + RateLimitedLog.suffix(suppressed))
                }
            }
        }
        return lines
    }

    private func describe(event: Int32, value: UInt32, name: String, endpoint: String) -> String? {
        let peer: String
        switch role {
        case .server: peer = "a peer of the \(name) (\(endpoint))"
        case .client: peer = "the handshake with \(endpoint)"
        }
        switch event {
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
            guard case let .client(security?) = role else { return nil }
            return "\(endpoint) refused this process's key \(security.keyPair.publicKey) (ZAP status \(value)): "
                + "add its .pub file to the server's --curve-authorized-keys"
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
            switch Int32(bitPattern: value) {
            case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                switch role {
                case .server: return "\(peer) failed: it does not use CURVE (started without --curve-server-key and --curve-key?)"
                case .client(nil): return "\(peer) failed: the server uses CURVE; pass --curve-server-key and --curve-key"
                case .client: return "\(peer) failed: the server does not use CURVE (it was started without --curve-key)"
                }
            case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
                if case .server = role { return "\(peer) failed: its messages do not decrypt (it was given another server's public key?)" }
                return "\(peer) failed: its messages do not decrypt (is --curve-server-key the server's public key?)"
            default:
                return "\(peer) failed: ZMTP protocol error 0x\(String(value, radix: 16))"
            }
        default:
            return nil
        }
    }
}
