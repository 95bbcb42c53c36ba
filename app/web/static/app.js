// VocalBorn web page: record or choose a recording, analyse it with live progress, see the
// result and the history. No build step, no library: plain browser APIs.
//
// The access token comes in the URL fragment (#token=...) of the link `vocalborn up` prints:
// a fragment is never sent to a server, so it reaches no log. It is kept in this module's
// memory only (never in storage) and removed from the address bar at once.

const API = "/api/v1";
const TERMINAL = new Set(["success", "failure", "cancelled"]);
const SVG = "http://www.w3.org/2000/svg";

const TEXT = {
  "zh-TW": {
    skip: "跳到主要內容",
    title: "VocalBorn 語音分析",
    uiLanguage: "介面語言",
    signIn: "登入",
    signInHelp: "請開啟 vocalborn up 印出的連結，或在此貼上存取權杖（只保存在此頁面的記憶體中）。",
    tokenLabel: "存取權杖",
    useToken: "使用",
    sessionHeading: "1. 練習課程",
    pickSession: "選擇課程",
    newSessionTitle: "新課程名稱",
    createSession: "建立課程",
    noSession: "（新課程）",
    recordHeading: "2. 錄音或選擇檔案",
    startRecording: "開始錄音",
    stopRecording: "停止錄音",
    recording: (s) => `錄音中… ${s.toFixed(1)} 秒`,
    recorded: (s) => `已錄音 ${s.toFixed(1)} 秒（WAV）`,
    micDenied: "無法使用麥克風",
    chooseFile: "或選擇音訊檔（wav、mp3、m4a、aac）",
    fileChosen: (name) => `已選擇 ${name}`,
    analysisLanguage: "錄音語言",
    targetText: "朗讀的句子（選填）",
    submit: "上傳並分析",
    uploading: "上傳中…",
    progressHeading: "3. 分析進度",
    stepsSeen: "經過的步驟",
    cancel: "取消分析",
    cancelRequested: "已要求取消",
    queue: (n) => `排隊第 ${n} 位`,
    eta: (s) => `預計還需 ${s} 秒`,
    failed: (code, message) => `分析失敗（${code}）：${message}`,
    cancelled: "分析已取消",
    resultHeading: "4. 分析結果",
    scoresCaption: "分數（0–100）",
    overall: "總分",
    pronunciation: "發音",
    fluency: "流暢度",
    rhythm: "節奏",
    notMeasured: "未測量",
    suggestions: "建議",
    improvementAreas: "改進重點",
    none: "無",
    timelineCaption: "錄音時間軸：說話、停頓與音節核",
    speech: "說話",
    pause: "停頓",
    nucleus: "音節核",
    seconds: "秒",
    timelineSummary: (d, p, n) => `長度 ${d} 秒，${p} 個停頓，${n} 個音節核。`,
    historyHeading: "歷史紀錄",
    historyCaption: "之前的分析與分數",
    historyChart: "分數隨時間的變化",
    noHistory: "還沒有完成的分析。",
    when: "時間",
    session: "課程",
    expired: "權杖無效或已過期：請在終端機執行 vocalborn link 取得新連結。",
    error: (m) => `錯誤：${m}`,
  },
  en: {
    skip: "Skip to main content",
    title: "VocalBorn speech analysis",
    uiLanguage: "Language",
    signIn: "Sign in",
    signInHelp: "Open the link vocalborn up printed, or paste an access token here (kept in this page's memory only).",
    tokenLabel: "Access token",
    useToken: "Use",
    sessionHeading: "1. Practice session",
    pickSession: "Session",
    newSessionTitle: "New session title",
    createSession: "Create session",
    noSession: "(new session)",
    recordHeading: "2. Record or choose a file",
    startRecording: "Start recording",
    stopRecording: "Stop recording",
    recording: (s) => `Recording… ${s.toFixed(1)} s`,
    recorded: (s) => `Recorded ${s.toFixed(1)} s (WAV)`,
    micDenied: "The microphone is not available",
    chooseFile: "Or choose an audio file (wav, mp3, m4a, aac)",
    fileChosen: (name) => `Chosen: ${name}`,
    analysisLanguage: "Language spoken",
    targetText: "Sentence read aloud (optional)",
    submit: "Upload and analyse",
    uploading: "Uploading…",
    progressHeading: "3. Progress",
    stepsSeen: "Steps so far",
    cancel: "Cancel analysis",
    cancelRequested: "Cancel requested",
    queue: (n) => `Position ${n} in the queue`,
    eta: (s) => `About ${s} s left`,
    failed: (code, message) => `The analysis failed (${code}): ${message}`,
    cancelled: "The analysis was cancelled",
    resultHeading: "4. Result",
    scoresCaption: "Scores (0–100)",
    overall: "Overall",
    pronunciation: "Pronunciation",
    fluency: "Fluency",
    rhythm: "Rhythm",
    notMeasured: "not measured",
    suggestions: "Suggestions",
    improvementAreas: "Improvement areas",
    none: "None",
    timelineCaption: "Timeline of the recording: speech, pauses and syllable nuclei",
    speech: "Speech",
    pause: "Pause",
    nucleus: "Syllable nucleus",
    seconds: "s",
    timelineSummary: (d, p, n) =>
      `${d} s long, ${p} ${p === 1 ? "pause" : "pauses"}, ${n} syllable ${n === 1 ? "nucleus" : "nuclei"}.`,
    historyHeading: "History",
    historyCaption: "Earlier analyses and their scores",
    historyChart: "Scores over time",
    noHistory: "No finished analysis yet.",
    when: "When",
    session: "Session",
    expired: "The token is invalid or has expired: run vocalborn link in a terminal for a new link.",
    error: (m) => `Error: ${m}`,
  },
};

const STEP_EN = {
  queued: "Queued",
  uploading: "Uploading the audio",
  preprocessing: "Preparing the audio",
  feature_extraction: "Extracting speech features",
  scoring: "Scoring",
  generating_suggestions: "Writing suggestions",
  waiting_retry: "Waiting to retry",
  waiting_for_ai: "Waiting for the AI service",
  completed: "Analysis complete",
  failed: "Analysis failed",
  cancelled: "Cancelled",
};

const SCORES = [
  ["overall_score", "overall"],
  ["pronunciation_accuracy", "pronunciation"],
  ["fluency_score", "fluency"],
  ["rhythm_score", "rhythm"],
];

const state = {
  token: null, // in memory only
  lang: "zh-TW",
  audio: null, // {blob, name}
  recorder: null,
  taskId: null,
  source: null, // the EventSource
  lastDoc: null,
  stepsSeen: [],
  result: null,
  history: [],
};

const $ = (id) => document.getElementById(id);
const t = (key, ...args) => {
  const value = TEXT[state.lang][key];
  return typeof value === "function" ? value(...args) : value;
};

// -- the API -----------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(API + path, { method, headers, body: payload });
  if (!response.ok) {
    let code = "error";
    let message = response.statusText;
    try {
      const doc = await response.json();
      code = doc.error.code;
      message = doc.error.message;
    } catch {
      // not the error shape: keep the status text
    }
    if (response.status === 401) showAuth(t("expired"));
    throw new ApiError(response.status, code, message);
  }
  return response.status === 204 ? null : response.json();
}

// -- language ------------------------------------------------------------------------------
function applyLanguage() {
  document.documentElement.lang = state.lang;
  document.title = t("title");
  for (const element of document.querySelectorAll("[data-i18n]")) {
    element.textContent = t(element.dataset.i18n);
  }
  $("record-button").textContent = t(state.recorder ? "stopRecording" : "startRecording");
  renderSessions($("session-select").value);
  if (state.audio) $("record-status").textContent = t(...state.audio.message);
  if (state.lastDoc) showStatus(state.lastDoc);
  renderSteps();
  if (state.result) renderResult(state.result);
  renderHistory();
}

function stepLabel(step) {
  if (!step) return "";
  return state.lang === "en" ? STEP_EN[step.code] || step.label : step.label;
}

// -- sign-in -------------------------------------------------------------------------------
function showAuth(message) {
  const alert = $("auth-message");
  alert.textContent = message;
  alert.hidden = !message;
  $("token-section").hidden = false;
}

async function start(token) {
  state.token = token;
  $("token-section").hidden = true;
  $("auth-message").hidden = true;
  $("app").hidden = false;
  await loadSessions();
  await loadHistory();
}

// -- sessions ------------------------------------------------------------------------------
async function loadSessions(selected) {
  state.sessions = await api("GET", "/practice/sessions?limit=50");
  renderSessions(selected || (state.sessions[0] ? state.sessions[0].practice_session_id : ""));
}

function renderSessions(selected) {
  const sessions = state.sessions || [];
  const select = $("session-select");
  select.replaceChildren(new Option(t("noSession"), ""));
  for (const session of sessions) {
    const when = new Date(session.created_at).toLocaleString(state.lang);
    const label = `${session.title || session.practice_session_id.slice(0, 8)} — ${when}`;
    select.append(new Option(label, session.practice_session_id));
  }
  select.value = selected;
}

async function createSession(title) {
  const session = await api("POST", "/practice/sessions", { title: title || null });
  await loadSessions(session.practice_session_id);
  return session.practice_session_id;
}

// -- recording: MediaRecorder, then WAV encoded here (the API and the AI service take WAV;
//    browsers record WebM/Opus, which the AI service refuses) -----------------------------
async function toggleRecording() {
  const button = $("record-button");
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    $("record-status").textContent = `${t("micDenied")}: ${error.message}`;
    return;
  }
  const chunks = [];
  const recorder = new MediaRecorder(stream);
  recorder.addEventListener("dataavailable", (event) => chunks.push(event.data));
  recorder.addEventListener("stop", async () => {
    clearInterval(state.recordTimer);
    stream.getTracks().forEach((track) => track.stop());
    state.recorder = null;
    button.setAttribute("aria-pressed", "false");
    button.textContent = t("startRecording");
    const { blob, seconds } = await encodeWav(new Blob(chunks, { type: recorder.mimeType }));
    setAudio(blob, "recording.wav", ["recorded", seconds]);
  });
  state.recorder = recorder;
  recorder.start();
  button.setAttribute("aria-pressed", "true");
  button.textContent = t("stopRecording");
  const started = performance.now();
  const elapsed = () => {
    $("record-status").textContent = t("recording", (performance.now() - started) / 1000);
  };
  elapsed();
  state.recordTimer = setInterval(elapsed, 200);
}

async function encodeWav(recorded) {
  const context = new AudioContext();
  let buffer;
  try {
    buffer = await context.decodeAudioData(await recorded.arrayBuffer());
  } finally {
    context.close();
  }
  const frames = buffer.length;
  const mono = new Float32Array(frames);
  for (let c = 0; c < buffer.numberOfChannels; c += 1) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < frames; i += 1) mono[i] += data[i] / buffer.numberOfChannels;
  }
  const bytes = new DataView(new ArrayBuffer(44 + frames * 2));
  const ascii = (offset, text) => [...text].forEach((ch, i) => bytes.setUint8(offset + i, ch.charCodeAt(0)));
  ascii(0, "RIFF");
  bytes.setUint32(4, 36 + frames * 2, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  bytes.setUint32(16, 16, true); // PCM header size
  bytes.setUint16(20, 1, true); // PCM
  bytes.setUint16(22, 1, true); // mono
  bytes.setUint32(24, buffer.sampleRate, true);
  bytes.setUint32(28, buffer.sampleRate * 2, true);
  bytes.setUint16(32, 2, true);
  bytes.setUint16(34, 16, true);
  ascii(36, "data");
  bytes.setUint32(40, frames * 2, true);
  for (let i = 0; i < frames; i += 1) {
    const s = Math.max(-1, Math.min(1, mono[i]));
    bytes.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return { blob: new Blob([bytes], { type: "audio/wav" }), seconds: buffer.duration };
}

function setAudio(blob, name, message) {
  state.audio = { blob, name, message };
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  $("record-status").textContent = t(...message);
  $("submit-button").disabled = false;
}

// -- submit and follow ------------------------------------------------------------------------
async function submit() {
  const button = $("submit-button");
  button.disabled = true;
  $("progress-message").textContent = t("uploading");
  try {
    let sessionId = $("session-select").value;
    if (!sessionId) sessionId = await createSession($("session-title").value.trim());
    const form = new FormData();
    form.append("audio", state.audio.blob, state.audio.name);
    const record = await api("POST", `/practice/sessions/${sessionId}/records`, form);
    const parameters = { language: $("analysis-lang").value };
    const target = $("target-text").value.trim();
    if (target) parameters.target_text = target;
    const task = await api("POST", "/tasks/analysis/submit", {
      practice_record_id: record.practice_record_id,
      parameters,
    });
    beginFollowing(task.task_id);
  } catch (error) {
    $("progress-message").textContent = t("error", error.message);
    button.disabled = false;
  }
}

function beginFollowing(taskId) {
  state.taskId = taskId;
  state.lastDoc = null;
  state.stepsSeen = [];
  state.result = null;
  $("result-section").hidden = true;
  $("progress-section").hidden = false;
  $("progress-section").dataset.status = "pending";
  $("cancel-button").disabled = false;
  $("progress-message").textContent = "";
  renderSteps();
  follow(taskId);
}

async function follow(taskId) {
  if (state.taskId !== taskId) return;
  let token;
  try {
    token = await api("POST", `/tasks/analysis/${taskId}/stream-token`);
  } catch (error) {
    $("progress-message").textContent = t("error", error.message);
    return;
  }
  const source = new EventSource(token.events_url);
  state.source = source;
  source.addEventListener("status", (event) => {
    const doc = JSON.parse(event.data);
    if (doc.task_id !== state.taskId) return;
    showStatus(doc);
    if (TERMINAL.has(doc.status)) {
      source.close();
      finished(doc);
    }
  });
  source.addEventListener("reconnect", () => {
    source.close();
    follow(taskId); // a fresh stream token; the stream sends the current state first
  });
  source.addEventListener("error", () => {
    // EventSource retries by itself; once it gives up (its stream token expired), start over
    if (source.readyState === EventSource.CLOSED && !TERMINAL.has(state.lastDoc?.status)) {
      setTimeout(() => follow(taskId), 1000);
    }
  });
}

function showStatus(doc) {
  state.lastDoc = doc;
  const percent = Math.max(0, Math.min(100, doc.progress || 0));
  const bar = $("progress-bar");
  bar.setAttribute("aria-valuenow", String(percent));
  bar.setAttribute("aria-valuetext", `${percent}% ${stepLabel(doc.current_step)}`);
  bar.querySelector(".fill").style.width = `${percent}%`;
  $("progress-percent").textContent = `${percent}%`;
  $("progress-step").textContent = stepLabel(doc.current_step);
  $("progress-queue").textContent =
    doc.status === "pending" && doc.queue_position ? t("queue", doc.queue_position) : "";
  const eta = TERMINAL.has(doc.status) ? null : seconds(doc.estimated_remaining_time);
  $("progress-eta").textContent = eta === null ? "" : t("eta", Math.round(eta));
  $("progress-section").dataset.status = doc.status;
  const step = doc.current_step;
  const working = doc.status === "processing";
  if (working && step && step.index > 0 && !state.stepsSeen.some((s) => s.code === step.code)) {
    state.stepsSeen.push(step);
    renderSteps();
  }
}

function renderSteps() {
  $("steps-seen").replaceChildren(
    ...state.stepsSeen.map((step) => {
      const item = document.createElement("li");
      item.dataset.code = step.code;
      item.textContent = stepLabel(step);
      return item;
    }),
  );
}

function seconds(duration) {
  const match = /^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$/.exec(
    duration || "",
  );
  if (!duration || !match) return null;
  const [d, h, m, s] = match.slice(1).map((v) => Number(v || 0));
  return ((d * 24 + h) * 60 + m) * 60 + s;
}

async function cancel() {
  if (!state.taskId) return;
  $("cancel-button").disabled = true;
  try {
    await api("DELETE", `/tasks/analysis/${state.taskId}`);
    $("progress-message").textContent = t("cancelRequested");
  } catch (error) {
    $("progress-message").textContent = t("error", error.message);
  }
}

async function finished(doc) {
  $("cancel-button").disabled = true;
  $("submit-button").disabled = !state.audio;
  if (doc.status === "failure") {
    $("progress-message").textContent = t("failed", doc.error_code, doc.error_message);
    return;
  }
  if (doc.status === "cancelled") {
    $("progress-message").textContent = t("cancelled");
    return;
  }
  state.result = await api("GET", `/tasks/analysis/${doc.task_id}/result`);
  renderResult(state.result);
  $("result-section").hidden = false;
  $("result-heading").focus();
  await loadHistory();
}

// -- the result ----------------------------------------------------------------------------
function scoreReason(result, key) {
  const detailed = result.detailed_analysis || {};
  for (const source of [detailed.scores || {}, detailed]) {
    const entry = source[key];
    if (entry && typeof entry === "object" && entry.reason) return entry.reason;
  }
  return key === "overall_score" ? "none of the scores it averages could be measured" : "";
}

function renderResult(result) {
  const chart = $("score-chart");
  chart.replaceChildren(
    ...SCORES.map(([key, label]) => {
      const value = result[key];
      const item = document.createElement("li");
      item.dataset.score = key;
      const name = document.createElement("span");
      name.textContent = t(label);
      const track = document.createElement("div");
      track.className = "track";
      const number = document.createElement("span");
      number.className = "value";
      if (value === null || value === undefined) {
        item.classList.add("not-measured");
        track.textContent = `${t("notMeasured")}: ${scoreReason(result, key)}`;
        number.textContent = "—";
      } else {
        const fill = document.createElement("div");
        fill.className = "value-bar";
        fill.style.width = `${Math.max(0, Math.min(100, value))}%`;
        track.append(fill);
        track.setAttribute("role", "img");
        track.setAttribute("aria-label", `${t(label)} ${value.toFixed(1)} / 100`);
        number.textContent = value.toFixed(1);
      }
      item.append(name, track, number);
      return item;
    }),
  );
  $("suggestions").textContent = result.suggestions || t("none");
  const areas = result.improvement_areas || [];
  $("areas").replaceChildren(
    ...(areas.length ? areas : [t("none")]).map((area) => {
      const item = document.createElement("li");
      item.textContent = typeof area === "string" ? area : Object.values(area).join(", ");
      return item;
    }),
  );
  renderTimeline(result);
}

function svg(tag, attributes, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

function speechStretches(detailed, sentences) {
  const duration = detailed.duration_seconds || 0;
  if (sentences && sentences.length) return sentences.map((s) => [s.start, s.end]);
  const stretches = [];
  let from = 0;
  for (const pause of detailed.pauses || []) {
    if (pause.start > from) stretches.push([from, pause.start]);
    from = pause.end;
  }
  if (from < duration) stretches.push([from, duration]);
  return stretches;
}

function renderTimeline(result) {
  const detailed = result.detailed_analysis || {};
  const duration = detailed.duration_seconds || 0;
  const pauses = detailed.pauses || [];
  const nuclei = detailed.syllable_nuclei_times || [];
  const width = 1000;
  const left = 130;
  const span = width - left - 20;
  const x = (time) => left + (duration > 0 ? (time / duration) * span : 0);
  const root = svg("svg", {
    viewBox: `0 0 ${width} 150`,
    role: "img",
    "aria-labelledby": "timeline-title",
    "data-duration": duration,
  });
  root.append(svg("title", { id: "timeline-title" }, `${t("timelineCaption")}. ${t("timelineSummary", duration.toFixed(1), pauses.length, nuclei.length)}`));
  const rows = [
    [t("speech"), 25],
    [t("pause"), 60],
    [t("nucleus"), 95],
  ];
  for (const [label, y] of rows) {
    root.append(svg("text", { x: 0, y: y + 14, "font-size": 16, fill: "#1a1a1a" }, label));
    root.append(svg("rect", { x: left, y, width: span, height: 20, fill: "#eef1f4" }));
  }
  for (const [start, end] of speechStretches(detailed, result.sentence_analyses)) {
    root.append(svg("rect", { class: "speech", x: x(start), y: 25, width: Math.max(1, x(end) - x(start)), height: 20, fill: "#0b5cad" }));
  }
  for (const pause of pauses) {
    root.append(svg("rect", { class: "pause", x: x(pause.start), y: 60, width: Math.max(1, x(pause.end) - x(pause.start)), height: 20, fill: "#a8461a" }));
  }
  for (const time of nuclei) {
    root.append(svg("circle", { class: "nucleus", cx: x(time), cy: 105, r: 4, fill: "#1a1a1a" }));
  }
  const step = duration > 20 ? 5 : 1;
  for (let time = 0; time <= duration + 1e-9; time += step) {
    root.append(svg("line", { x1: x(time), x2: x(time), y1: 120, y2: 126, stroke: "#1a1a1a" }));
    root.append(svg("text", { x: x(time), y: 143, "font-size": 14, "text-anchor": "middle", fill: "#1a1a1a" }, `${time}${t("seconds")}`));
  }
  const legend = document.createElement("ul");
  legend.className = "legend";
  for (const [kind, label] of [["speech", "speech"], ["pause", "pause"], ["nucleus", "nucleus"]]) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = `swatch ${kind}`;
    item.append(swatch, t(label));
    legend.append(item);
  }
  $("timeline").replaceChildren(root, legend);
  $("timeline-summary").textContent = t("timelineSummary", duration.toFixed(1), pauses.length, nuclei.length);
}

// -- history ---------------------------------------------------------------------------------
async function loadHistory() {
  const sessions = await api("GET", "/practice/sessions?limit=10");
  const finished = [];
  for (const session of sessions) {
    const status = await api("GET", `/tasks/analysis/session/${session.practice_session_id}/status`);
    for (const task of status.tasks) {
      if (task.status === "success") finished.push({ task, session });
    }
  }
  finished.sort((a, b) => (a.task.completed_at < b.task.completed_at ? 1 : -1));
  const recent = finished.slice(0, 20);
  const results = await Promise.all(recent.map(({ task }) => api("GET", `/tasks/analysis/${task.task_id}/result`)));
  state.history = recent
    .map(({ task, session }, i) => ({ when: task.completed_at, session, result: results[i] }))
    .reverse(); // oldest first
  renderHistory();
}

function renderHistory() {
  const body = $("history-table").querySelector("tbody");
  const format = (value) => (value === null || value === undefined ? t("notMeasured") : value.toFixed(1));
  if (!state.history.length) {
    const row = document.createElement("tr");
    const cell = document.createElement("td");
    cell.colSpan = 5;
    cell.textContent = t("noHistory");
    row.append(cell);
    body.replaceChildren(row);
    $("history-chart").replaceChildren();
    return;
  }
  body.replaceChildren(
    ...[...state.history].reverse().map(({ when, session, result }) => {
      const row = document.createElement("tr");
      row.dataset.task = result.task_id;
      const cells = [
        new Date(when).toLocaleString(state.lang),
        session.title || session.practice_session_id.slice(0, 8),
        format(result.overall_score),
        format(result.fluency_score),
        format(result.rhythm_score),
      ];
      cells.forEach((text, i) => {
        const cell = document.createElement("td");
        if (i >= 2) cell.className = "num";
        cell.textContent = text;
        row.append(cell);
      });
      return row;
    }),
  );
  renderHistoryChart();
}

function renderHistoryChart() {
  const width = 1000;
  const height = 220;
  const left = 50;
  const top = 15;
  const plotW = width - left - 20;
  const plotH = height - top - 35;
  const n = state.history.length;
  const x = (i) => left + (n > 1 ? (i / (n - 1)) * plotW : plotW / 2);
  const y = (v) => top + plotH - (v / 100) * plotH;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": "history-title" });
  root.append(svg("title", { id: "history-title" }, `${t("historyChart")} (${t("historyCaption")})`));
  for (const v of [0, 50, 100]) {
    root.append(svg("line", { x1: left, x2: left + plotW, y1: y(v), y2: y(v), stroke: "#c3c9cf" }));
    root.append(svg("text", { x: left - 8, y: y(v) + 5, "font-size": 14, "text-anchor": "end", fill: "#1a1a1a" }, v));
  }
  const series = [
    ["overall_score", "#0b5cad", "overall", 7],
    ["fluency_score", "#1d6b2f", "fluency", 5],
    ["rhythm_score", "#8a2f8a", "rhythm", 3],
  ]; // radii shrink so that equal scores stay visible one inside the other
  for (const [key, colour, , radius] of series) {
    const points = state.history
      .map((entry, i) => [i, entry.result[key]])
      .filter(([, v]) => v !== null && v !== undefined);
    if (points.length > 1) {
      root.append(svg("polyline", { points: points.map(([i, v]) => `${x(i)},${y(v)}`).join(" "), fill: "none", stroke: colour, "stroke-width": 2.5 }));
    }
    for (const [i, v] of points) root.append(svg("circle", { cx: x(i), cy: y(v), r: radius, fill: colour }));
  }
  const legend = document.createElement("ul");
  legend.className = "legend";
  for (const [, , label] of series) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = `swatch ${label}`;
    item.append(swatch, t(label));
    legend.append(item);
  }
  $("history-chart").replaceChildren(root, legend);
}

// -- wiring ----------------------------------------------------------------------------------
function wire() {
  $("ui-lang").addEventListener("change", (event) => {
    state.lang = event.target.value;
    applyLanguage();
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    $("token-input").value = "";
    start(token).catch((error) => showAuth(t("error", error.message)));
  });
  $("new-session-form").addEventListener("submit", (event) => {
    event.preventDefault();
    createSession($("session-title").value.trim()).catch((error) => {
      $("progress-message").textContent = t("error", error.message);
    });
  });
  $("record-button").addEventListener("click", toggleRecording);
  $("file-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) setAudio(file, file.name, ["fileChosen", file.name]);
  });
  $("submit-button").addEventListener("click", submit);
  $("cancel-button").addEventListener("click", cancel);
}

function tokenFromFragment() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  const token = params.get("token");
  if (token) history.replaceState(null, "", window.location.pathname + window.location.search);
  return token;
}

wire();
applyLanguage();
const initial = tokenFromFragment();
if (initial) {
  start(initial).catch((error) => showAuth(error instanceof ApiError && error.status === 401 ? t("expired") : t("error", error.message)));
} else {
  showAuth("");
}
document.body.dataset.ready = "true";
