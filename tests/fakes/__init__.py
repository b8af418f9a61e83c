"""Faithful local fakes of OAuth providers that cannot run here (GitHub, Atlassian, Salesforce,
Google): stdlib HTTP servers on 127.0.0.1, in a background thread of the test process.

    with FakeGitHub(client_id="gh", client_secret="s", redirect_uris=[cb]) as gh:
        gh.base_url  # every host of the provider is served under this one URL
"""
