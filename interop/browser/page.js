// Drives mqtt.js and @stomp/stompjs against the broker and reports to the test's HTTP
// server: POST /event for steps the test waits on, POST /result with what was received.
// Everything also goes to the DOM and the console, for a person looking at a failure.
"use strict";

const params = new URLSearchParams(location.search);

function log(text) {
  console.log(text);
  const item = document.createElement("li");
  item.textContent = text;
  document.getElementById("log").appendChild(item);
}

function post(path, body) {
  return fetch(path, { method: "POST", body: JSON.stringify(body) });
}

function finish(name, outcome) {
  log(`${name}: ${JSON.stringify(outcome)}`);
  document.getElementById("result").textContent += `${name} ${JSON.stringify(outcome)}\n`;
  post("/result", { client: name, ...outcome });
}

// MQTT: subscribe to browser/#, tell the test (which then publishes browser/from-tcp),
// publish browser/from-page ourselves, finish once both have come back.
function runMqtt(url) {
  const client = mqtt.connect(url, {
    clientId: "browser-mqtt", protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10000,
  });
  const received = [];
  client.on("connect", () => {
    log("mqtt: connected");
    client.subscribe("browser/#", { qos: 1 }, (err, granted) => {
      if (err) return finish("mqtt", { error: String(err) });
      log(`mqtt: subscribed ${JSON.stringify(granted)}`);
      post("/event", { client: "mqtt", event: "subscribed" });
      client.publish("browser/from-page", "hello from chromium", { qos: 1 });
    });
  });
  client.on("message", (topic, payload) => {
    received.push([topic, payload.toString()]);
    log(`mqtt: received ${topic}`);
    if (received.length === 2) {
      client.end(false, () => finish("mqtt", { received }));
    }
  });
  client.on("error", (err) => finish("mqtt", { error: String(err) }));
  client.on("close", () => {
    if (received.length < 2) finish("mqtt", { error: "closed", received });
  });
}

// STOMP: subscribe to /topic/browser, send to it, finish once the message comes back.
function runStomp(url) {
  let done = false;
  const end = (outcome) => {
    if (!done) { done = true; finish("stomp", outcome); client.deactivate(); }
  };
  const client = new StompJs.Client({
    brokerURL: url,
    connectHeaders: { host: "/" },
    reconnectDelay: 0,
    debug: (text) => console.log(`stomp: ${text}`),
  });
  client.onConnect = (frame) => {
    log(`stomp: connected, version ${frame.headers.version}`);
    client.subscribe("/topic/browser", (message) => {
      end({ received: [[message.headers.destination, message.body]] });
    });
    client.publish({ destination: "/topic/browser", body: "hello from stompjs" });
  };
  client.onStompError = (frame) => end({ error: frame.headers.message || "ERROR frame" });
  client.onWebSocketClose = (event) => end({ error: `closed (${event.code})` });
  client.activate();
}

if (params.has("mqtt")) runMqtt(params.get("mqtt"));
if (params.has("stomp")) runStomp(params.get("stomp"));
