"""The lab dashboard: a live web page of a campaign, served from its journal by replay.

    uv run swarm dashboard [--journal URL] [--campaign TAG] [--host H --port P]

state.py  what the page shows (journal/views.py's CampaignView plus the histories it draws), redaction
server.py the starlette app, the thread that follows the journal, server-sent events
cli.py    the `swarm dashboard` sub-command
static/   the page (HTML, JS, CSS); plotly.js comes from the plotly package
"""
