from django.urls import path

from calls import views

urlpatterns = [
    path("records/<str:token>", views.record, name="record"),
]
