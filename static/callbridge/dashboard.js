// Draws the dashboard's charts from the JSON the page carries (calls.dashboard.Dashboard.chart_data).
document.addEventListener("DOMContentLoaded", function () {
  var source = document.getElementById("dashboard-data");
  if (!source || typeof Chart === "undefined") { return; }
  var data = JSON.parse(JSON.parse(source.textContent));
  var colours = ["#417690", "#ba2121", "#e0a800", "#5b8a3c", "#7a5195", "#ef5675", "#888888", "#003f5c"];
  new Chart(document.getElementById("calls-per-day"), {
    type: "bar",
    data: {
      labels: data.days,
      datasets: data.series.map(function (s, i) {
        return { label: s.label || s.result, data: s.counts, backgroundColor: colours[i % colours.length] };
      })
    },
    options: { animation: false, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } }
  });
  new Chart(document.getElementById("calls-per-hour"), {
    type: "bar",
    data: {
      labels: data.hours.map(function (_, h) { return h + ":00"; }),
      datasets: [{ label: data.hours_label || "", data: data.hours, backgroundColor: "#417690" }]
    },
    options: { animation: false, plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true } } }
  });
});
