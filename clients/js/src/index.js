// sensor-telemetry client for Node.js: the public surface.
//   TelemetryClient          connect, send readings, await ACKs (client.js)
//   float64, int, nsFromMs   explicit number and time forms for readings (msgpack.js, readings.js)
//   Connection, encodeFrame, decodeBody ...   the sans-IO protocol (wire.js)

export { TelemetryClient, TelemetryError, parseAddress, newStreamId, CLIENT_NAME, CLIENT_VERSION } from "./client.js";
export { float64, int, Float64, Int, encode, decodeOne } from "./msgpack.js";
export { toWire, encodeReading, nsFromMs, nowNs, NUMBER_KINDS, NUMBER_MAP_KINDS } from "./readings.js";
export {
  Connection,
  ProtocolError,
  LocalProtocolError,
  ErrorCode,
  MessageType,
  State,
  NEED_DATA,
  CLOSED,
  PROTOCOL_VERSION,
  MAX_FRAME_BYTES,
  MAX_BATCH_READINGS,
  BAD_FRAME_BUDGET,
  HEARTBEAT_MS,
  decodeBody,
  encodeBody,
  encodeFrame,
  encodeBatchFrame,
  parseMessage,
} from "./wire.js";
