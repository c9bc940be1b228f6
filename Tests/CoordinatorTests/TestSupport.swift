import Coordinator
import Foundation
import Worker
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A minimal HTTP/1.1 client over a raw socket, so tests can also send malformed requests.
enum RawHTTP {
    struct Response {
        var status: Int
        var headers: [String: String]
        var body: Data
        var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] }
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    struct Failure: Error, CustomStringConvertible { let description: String }

    /// Sends raw bytes and reads one response (until Content-Length bytes or EOF), with a deadline.
    static func exchange(port: Int, _ raw: Data, timeout: TimeInterval = 20) throws -> Response {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw Failure(description: "connect to 127.0.0.1:\(port) failed") }
        var offset = 0
        let bytes = [UInt8](raw)
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if sent <= 0 { break }  // the server may answer and close before reading everything (413)
            offset += sent
        }
        var received = [UInt8]()
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let response = parse(received) { return response }
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 100) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            received += chunk[0..<count]
        }
        if let response = parse(received) { return response }
        throw Failure(description: "no complete HTTP response within \(timeout) s (got \(received.count) bytes)")
    }

    static func parse(_ bytes: [UInt8]) -> Response? {
        guard bytes.count >= 4, let end = (0...(bytes.count - 4)).first(where: { bytes[$0..<($0 + 4)].elementsEqual([13, 10, 13, 10]) }) else { return nil }
        let head = String(decoding: bytes[0..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = head[0].split(separator: " ")
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { return nil }
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let length = Int(headers["content-length"] ?? "0") ?? 0
        guard bytes.count >= end + 4 + length else { return nil }
        return Response(status: status, headers: headers, body: Data(bytes[(end + 4)..<(end + 4 + length)]))
    }

    static func request(port: Int, method: String, path: String, body: Data? = nil, headers: [String: String] = [:],
                        timeout: TimeInterval = 20) throws -> Response {
        var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        if let body { text += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        text += "\r\n"
        return try exchange(port: port, Data(text.utf8) + (body ?? Data()), timeout: timeout)
    }

    static func generate(port: Int, _ json: [String: Any], token: String? = nil, timeout: TimeInterval = 20) throws -> Response {
        let body = try JSONSerialization.data(withJSONObject: json)
        return try request(port: port, method: "POST", path: "/v1/images/generations", body: body,
                           headers: token.map { ["Authorization": "Bearer \($0)"] } ?? [:], timeout: timeout)
    }
}

/// A raw ZeroMQ client of the scheduler's front end: sends any frames, collects replies.
final class RawClient {
    let socket: ZMQSocket

    init(endpoint: String, context: ZMQContext) throws {
        socket = try ZMQSocket(context: context, kind: .dealer)
        try socket.connect(endpoint)
    }

    func send(_ frames: [Data]) throws { try socket.send([Data()] + frames) }

    func submit(_ body: SubmitBody) throws { try send(WireProtocol.frames(WireProtocol.submit, [WireProtocol.encode(body)])) }

    /// The next reply as (command, payload), or nil after `timeout` seconds.
    func receive(timeout: TimeInterval) throws -> (command: String, payload: [Data])? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try ZMQSocket.pollReadable([socket], timeout: 50)[0], let message = try socket.receive(dontWait: true) {
                return try WireProtocol.parse(message.frames.dropFirst())
            }
        }
        return nil
    }

    /// Replies as id → [outcome] ("ok" or the error code), collected until `count` arrive or
    /// `timeout` passes, then for `linger` more seconds to catch duplicates.
    func collect(count: Int, timeout: TimeInterval, linger: TimeInterval = 0) throws -> [String: [String]] {
        var outcomes: [String: [String]] = [:]
        var total = 0
        let deadline = Date().addingTimeInterval(timeout)
        while total < count, Date() < deadline, let (command, payload) = try receive(timeout: deadline.timeIntervalSinceNow) {
            if let (id, outcome) = Self.outcome(command, payload) { outcomes[id, default: []].append(outcome); total += 1 }
        }
        let lingerDeadline = Date().addingTimeInterval(linger)
        while Date() < lingerDeadline, let (command, payload) = try receive(timeout: lingerDeadline.timeIntervalSinceNow) {
            if let (id, outcome) = Self.outcome(command, payload) { outcomes[id, default: []].append(outcome) }
        }
        return outcomes
    }

    static func outcome(_ command: String, _ payload: [Data]) -> (String, String)? {
        if command == WireProtocol.result, let header = try? WireProtocol.decode(ResultHeader.self, from: payload[0], what: "RESULT") {
            return (header.id, "ok")
        }
        if command == WireProtocol.error, let body = try? WireProtocol.decode(ErrorBody.self, from: payload[0], what: "ERROR") {
            return (body.id ?? "?", body.code.rawValue)
        }
        return nil
    }
}

/// Waits until `condition` holds or `timeout` passes; returns whether it held.
@discardableResult
func eventually(timeout: TimeInterval, interval: TimeInterval = 0.02, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        Thread.sleep(forTimeInterval: interval)
    }
    return try condition()
}

/// A scheduler and workers on threads of the test process, over loopback TCP.
final class InProcessCluster {
    let context: ZMQContext
    let metrics = MetricsRegistry()
    let scheduler: InferenceScheduler
    private let schedulerThread: Thread
    private(set) var workers: [InferenceWorkerClient] = []
    private var workerThreads: [Thread] = []
    var logs = LogCapture()

    init(configure: (inout SchedulerConfiguration) -> Void = { _ in }) throws {
        context = try ZMQContext()
        var configuration = SchedulerConfiguration()
        configuration.heartbeatInterval = 0.1
        configuration.liveness = 5
        configure(&configuration)
        let logs = self.logs
        scheduler = try InferenceScheduler(configuration: configuration, frontend: "tcp://127.0.0.1:*", backend: "tcp://127.0.0.1:*",
                                           metrics: metrics, context: context, log: { logs.append("scheduler: " + $0) })
        let scheduler = self.scheduler
        schedulerThread = Thread { try? scheduler.run() }
        schedulerThread.start()
    }

    @discardableResult
    func addWorker(name: String, executor: InferenceBatchExecutor = NullImageExecutor(), maxBatch: Int = 8,
                   heartbeat: TimeInterval = 0.1) throws -> InferenceWorkerClient {
        var configuration = InferenceWorkerConfiguration(scheduler: scheduler.backendEndpoint, name: name)
        configuration.maxBatch = maxBatch
        configuration.heartbeatInterval = heartbeat
        let logs = self.logs
        let worker = try InferenceWorkerClient(configuration: configuration, executor: executor, context: context,
                                               log: { logs.append($0) })
        let thread = Thread { try? worker.run() }
        thread.start()
        workers.append(worker)
        workerThreads.append(thread)
        return worker
    }

    func waitForWorkers(_ count: Int, timeout: TimeInterval = 10) -> Bool {
        eventually(timeout: timeout) { scheduler.status.workers.count == count }
    }

    func stop() {
        for worker in workers { worker.requestStop() }
        let deadline = Date().addingTimeInterval(10)
        for thread in workerThreads { while !thread.isFinished && Date() < deadline { usleep(2000) } }
        scheduler.requestStop(drain: false)
        while !schedulerThread.isFinished && Date() < deadline { usleep(2000) }
    }
}

/// Log lines collected from several threads.
final class LogCapture: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []

    func append(_ line: String) {
        lock.lock()
        lines.append(line)
        lock.unlock()
    }

    var all: [String] {
        lock.lock()
        defer { lock.unlock() }
        return lines
    }

    func contains(_ text: String) -> Bool { all.contains { $0.contains(text) } }
}
