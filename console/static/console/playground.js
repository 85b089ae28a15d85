/* The playground: sends the conversation to the console (never to the gateway: the browser holds
   no key) and shows the reply as its tokens arrive.

   POST <form data-stream-url> with JSON {model, temperature, max_tokens, system, message,
   history} and the form's CSRF token; the answer is the gateway's server-sent events relayed by
   the console, plus the console's own `event: vlinders.cost` (tokens and cost of the reply)
   before `data: [DONE]`. A refusal comes back as JSON in OpenAI's error shape with the gateway's
   status. Without this script the form posts to the page and the reply comes back whole. */
(function () {
  "use strict";

  function onReady(fn) {
    if (document.readyState !== "loading") { fn(); } else { document.addEventListener("DOMContentLoaded", fn); }
  }

  onReady(function () {
    var form = document.getElementById("playground-form");
    if (!form || !window.fetch || !window.TextDecoder || !window.ReadableStream) { return; }

    var conversation = document.getElementById("playground-conversation");
    var usageLine = document.getElementById("playground-usage");
    var errorBox = document.getElementById("playground-error");
    var historyField = document.getElementById("playground-history");
    var sendButton = document.getElementById("playground-send");
    var stopButton = document.getElementById("playground-stop");
    var message = form.elements.namedItem("message");
    var modelSelect = form.elements.namedItem("model");
    var maxTokens = form.elements.namedItem("max_tokens");
    var modelHelp = document.getElementById("playground-model-help");
    var models = {};
    var modelsData = document.getElementById("playground-models");
    if (modelsData) {
      JSON.parse(modelsData.textContent).forEach(function (m) { models[m.name] = m; });
    }
    var history = [];
    try { history = JSON.parse(historyField.value || "[]"); } catch (e) { history = []; }
    var controller = null;

    function describeModel() {
      var m = models[modelSelect.value];
      if (!m) { return; }
      if (modelHelp) { modelHelp.textContent = m.summary; }
      maxTokens.max = String(m.max_tokens);
    }
    modelSelect.addEventListener("change", describeModel);
    describeModel();

    function showError(text) {
      errorBox.textContent = text;
      errorBox.hidden = false;
    }

    function hideError() {
      errorBox.textContent = "";
      errorBox.hidden = true;
    }

    function addTurn(role, text) {
      var empty = document.getElementById("playground-empty");
      if (empty) { empty.remove(); }
      var item = document.createElement("li");
      item.className = "turn turn-" + role;
      var who = document.createElement("span");
      who.className = "who";
      who.textContent = role === "user" ? "You" : "Assistant";
      var content = document.createElement("div");
      content.className = "content";
      content.textContent = text;
      item.appendChild(who);
      item.appendChild(content);
      conversation.appendChild(item);
      return item;
    }

    function setBusy(busy) {
      conversation.setAttribute("aria-busy", busy ? "true" : "false");
      sendButton.disabled = busy;
      stopButton.hidden = !busy;
    }

    function saveHistory() {
      historyField.value = JSON.stringify(history);
    }

    function clearConversation() {
      history = [];
      saveHistory();
      conversation.textContent = "";
      var empty = document.createElement("li");
      empty.className = "turn empty muted";
      empty.id = "playground-empty";
      empty.textContent = "No messages yet.";
      conversation.appendChild(empty);
      usageLine.textContent = "";
      hideError();
      message.focus();
    }

    function showCost(item, cost) {
      var meta = document.createElement("p");
      meta.className = "meta";
      meta.textContent = cost.prompt_tokens + " prompt + " + cost.completion_tokens +
        " completion tokens · " + cost.cost_display;
      item.appendChild(meta);
      usageLine.textContent = "Last reply: " + cost.prompt_tokens + " prompt tokens, " +
        cost.completion_tokens + " completion tokens, cost " + cost.cost_display + ".";
    }

    // One server-sent event: {event, data} from its lines.
    function parseEvent(block) {
      var name = "message";
      var data = [];
      block.split(/\r?\n/).forEach(function (line) {
        if (line.indexOf("event:") === 0) { name = line.slice(6).trim(); }
        else if (line.indexOf("data:") === 0) { data.push(line.slice(5).replace(/^ /, "")); }
      });
      return { event: name, data: data.join("\n") };
    }

    async function errorText(response) {
      var text = "The request failed (HTTP " + response.status + ").";
      try {
        var body = await response.json();
        if (body && body.error && body.error.message) {
          text = body.error.message + " (HTTP " + response.status + ")";
        }
      } catch (e) { /* not JSON: keep the status */ }
      return text;
    }

    async function send() {
      var text = message.value.trim();
      if (!text) {
        showError("Write a message first.");
        message.focus();
        return;
      }
      hideError();
      var payload = {
        model: modelSelect.value,
        temperature: form.elements.namedItem("temperature").value,
        max_tokens: maxTokens.value,
        system: form.elements.namedItem("system").value,
        message: text,
        history: history
      };
      var userTurn = addTurn("user", text);
      var replyTurn = addTurn("assistant", "");
      var content = replyTurn.querySelector(".content");
      var reply = "";
      var failed = false;
      message.value = "";
      setBusy(true);
      controller = new AbortController();
      try {
        var response = await fetch(form.dataset.streamUrl, {
          method: "POST",
          credentials: "same-origin",
          headers: {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "X-CSRFToken": form.elements.namedItem("csrfmiddlewaretoken").value
          },
          body: JSON.stringify(payload),
          signal: controller.signal
        });
        var type = response.headers.get("Content-Type") || "";
        if (!response.ok || type.indexOf("text/event-stream") !== 0) {
          failed = true;
          if (response.ok || response.redirected) {
            showError("Your session has ended: sign in again, then resend.");
          } else {
            showError(await errorText(response));
          }
          userTurn.remove();
          replyTurn.remove();
          message.value = text;
          return;
        }
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        var finished = false;
        while (!finished) {
          var chunk = await reader.read();
          if (chunk.done) { break; }
          buffer += decoder.decode(chunk.value, { stream: true });
          var blocks = buffer.split(/\r?\n\r?\n/);
          buffer = blocks.pop();
          for (var i = 0; i < blocks.length; i++) {
            if (!blocks[i]) { continue; }
            var sse = parseEvent(blocks[i]);
            if (sse.data === "[DONE]") { finished = true; break; }
            var body;
            try { body = JSON.parse(sse.data); } catch (e) { continue; }
            if (sse.event === "vlinders.cost") {
              showCost(replyTurn, body);
            } else if (body.error) {
              failed = true;
              showError(body.error.message || "The reply failed.");
            } else if (body.choices && body.choices.length && body.choices[0].delta) {
              var piece = body.choices[0].delta.content;
              if (piece) {
                reply += piece;
                content.textContent = reply;
              }
            }
          }
        }
      } catch (error) {
        if (error && error.name === "AbortError") {
          content.textContent = reply + (reply ? " " : "") + "[stopped]";
        } else {
          failed = true;
          showError("The console could not be reached: check your connection and resend.");
        }
      } finally {
        controller = null;
        setBusy(false);
        if (!failed && reply) {
          history.push({ role: "user", content: text });
          history.push({ role: "assistant", content: reply });
          saveHistory();
        } else if (!reply && replyTurn.isConnected && !content.textContent) {
          replyTurn.remove();
        }
        message.focus();
      }
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (event.submitter && event.submitter.name === "clear") {
        if (controller) { controller.abort(); }
        clearConversation();
        return;
      }
      if (controller) { return; }
      send();
    });

    stopButton.addEventListener("click", function () {
      if (controller) { controller.abort(); }
    });

    message.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        if (form.requestSubmit) { form.requestSubmit(sendButton); } else { sendButton.click(); }
      }
    });
  });
})();
